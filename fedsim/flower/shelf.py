"""The actors' shelf: a finished simulation's client actors kept for the next run of the
process, and every actor of the engine ended when Ray stops.

Flower's Ray backend shuts Ray down when a simulation ends and builds a new pool of
actors for the next, although fedsim started Ray and runs an experiment's runs one
after another: Ray is stopped once, by whoever started it
(fedsim.flower.ray_instance.RayStarter), and a finished simulation's actors wait on
the shelf for the next run with the same client resources. The backend's `build` and
`terminate` are replaced to that end (fedsim.ground.insides.share_actors); the sweep
and equivalence tests check that the next run's calls run in the same processes and
give the numbers a fresh process gives.
"""

from __future__ import annotations

import contextlib
import threading

from fedsim.ground import insides

# The actor pools Flower's engine has built on the Ray instance up now
POOLS: list = []


class Shelf:
    """Where a finished simulation's actors wait for the next run of the process.

    An actor start costs seconds (a worker process that imports torch and flwr, then
    the run's model and data view): most of a short run, paid by every run of a sweep.
    A simulation's actors are all idle when Flower ends it (its workers have returned
    each actor to the pool), so they are shelved, keyed by their Ray resources, and
    the next build takes them. Only one backend holds actors at a time: a build waits
    (up to HANDOVER_SECONDS) for the previous simulation's wind-down, which fedsim lets
    run while the next run starts (run_simulation); a late wind-down ends its actors.
    Actors of other resources are ended, or Ray could not place the new ones. What an
    actor keeps for a run is keyed by the run's config (fedsim.flower.client_app), so a run
    computes in a reused actor what it computes in a fresh one."""

    HANDOVER_SECONDS = 60.0

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._holder: object | None = None  # the backend whose simulation runs now
        self._resources: tuple = ()
        self._actors: list = []

    def take(self, backend, capacity: int) -> list:
        """The shelved actors `backend` may use (at most `capacity`); it holds them now."""
        resources = tuple(sorted(backend.client_resources.items()))
        with self._changed:
            self._changed.wait_for(lambda: self._holder is None, timeout=self.HANDOVER_SECONDS)
            self._holder = backend
            actors, self._actors = self._actors, []
            if resources != self._resources:
                self._resources = resources
                _end(actors)
                actors = []
        _end(actors[capacity:])
        return actors[:capacity]

    def give_back(self, backend) -> None:
        """Flower ends `backend`'s simulation: shelve its actors, or end them when a
        later build has taken over. After Ray's stop they are gone already (and a
        later instance's shelf is not theirs)."""
        import ray

        if not ray.is_initialized() or not any(pool is backend.pool for pool in POOLS):
            return
        actors = backend.pool.pool if backend.pool else []
        with self._changed:
            if self._holder is not backend:
                _end(actors)
                return
            self._holder, self._actors = None, list(actors)
            self._changed.notify_all()

    def clear(self) -> None:
        """Forget the actors (Ray has stopped: they are gone with it)."""
        with self._changed:
            self._holder, self._actors = None, []
            self._changed.notify_all()


def _end(actors: list) -> None:
    for actor in actors:
        actor.terminate.remote()


def end_actors() -> None:
    """Kill every actor of the engine's pools, idle or running a bundle (Flower's own
    pool keeps the busy ones by their pending result, a private name of flwr 1.42): a
    worker thread waiting on one gets an error instead of waiting on a Ray that is
    about to stop. They would die with the instance anyway; no restart is wanted."""
    import ray

    for pool in POOLS:
        for actor in insides.pool_actors(pool):
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)
    POOLS.clear()


SHELF = Shelf()


def install() -> None:
    """Flower's backend takes its actors from the shelf and gives them back to it."""
    insides.share_actors(SHELF.take, SHELF.give_back, POOLS)
