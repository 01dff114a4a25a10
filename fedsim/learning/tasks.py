"""What a run learns, one class per kind of task: what an example is, how a batch
becomes a model's input, the loss, what counts as correct, the input a model is tried
on before a run starts, the facts a model factory is given, and what config.json
records (`describe`, read back by `described`).

Everything under the runner (the Flower layer, the simulation, the algorithms) holds a
Task and asks it; only this module and the data readers know what a pixel, a table row
or a character is. A dataset says which task it is (fedsim.learning.data); adding a
kind of task is a class here and a reader there (docs/tasks.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch

IMAGE_SHAPE = (3, 32, 32)  # CIFAR-10's (channels, height, width)
NUM_CLASSES = 10  # CIFAR-10's


@dataclass(frozen=True)
class PixelStats:
    """Each channel's pixel mean and standard deviation over the training split, in
    the images' own 0-255 units (--normalize train-split)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]


class Task:
    """A supervised task whose examples each have one integer label; `classes` labels.
    Subclasses say what an example is; the loss and accuracy are cross-entropy over one
    score per class and the arg-max, unless a subclass says otherwise."""

    kind: ClassVar[str]  # config.json's name for it
    plural: ClassVar[str]  # what its examples are called in messages ("images")
    classes: int

    def inputs(self, batch: torch.Tensor) -> torch.Tensor:
        """A batch as stored (the cache's dtype) -> what the model takes."""
        return batch

    def scores(self) -> int:
        """How many scores the model gives per example."""
        return self.classes

    def loss(
        self, scores: torch.Tensor, labels: torch.Tensor, reduction: str = "mean"
    ) -> torch.Tensor:
        import torch.nn.functional as F

        return F.cross_entropy(scores, labels, reduction=reduction)

    def right(self, scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Whether each of the batch's predictions is right (booleans)."""
        return scores.argmax(1) == labels

    def example(self, count: int) -> torch.Tensor:
        """`count` examples of the stored kind (zeros), to try a model on."""
        raise NotImplementedError

    def example_text(self) -> str:
        """The examples' shape, as the model checks say it."""
        raise NotImplementedError

    def model_facts(self) -> dict[str, object]:
        """What a model factory is given, by the names it takes."""
        return {"num_classes": self.scores()}

    def augments(self) -> bool:
        """Whether --augment means something for it."""
        return False

    def describe(self) -> dict[str, object]:
        raise NotImplementedError


@dataclass(frozen=True)
class ImageClassification(Task):
    """Images (uint8, channels × height × width) of `classes` classes, scaled to [-1, 1]
    as they enter the model and, when the inputs are standardised, by the training
    split's pixel statistics (a hook of the model: fedsim.learning.models). CIFAR-10's
    by default."""

    kind: ClassVar[str] = "image-classification"
    plural: ClassVar[str] = "images"
    image: tuple[int, int, int] = IMAGE_SHAPE
    classes: int = NUM_CLASSES
    pixels: PixelStats | None = None  # None: pixels scaled to [-1, 1], nothing measured

    def inputs(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 [0, 255] -> float [-1, 1], the quickstart's Normalize((0.5,)*3, (0.5,)*3)."""
        return batch.float().div_(127.5).sub_(1.0)

    def example(self, count: int) -> torch.Tensor:
        import torch

        return torch.zeros((count, *self.image), dtype=torch.uint8)

    def example_text(self) -> str:
        return f"the data's images ({'x'.join(map(str, self.image))})"

    def model_facts(self) -> dict[str, object]:
        return {"num_classes": self.classes, "image_shape": self.image}

    def augments(self) -> bool:
        return True

    def describe(self) -> dict[str, object]:
        # no "task" key: what runs before tasks wrote, and still write, for images
        facts: dict[str, object] = {"image_shape": list(self.image), "classes": self.classes}
        if self.pixels is not None:
            facts |= {"pixel_mean": list(self.pixels.mean), "pixel_std": list(self.pixels.std)}
        return facts


@dataclass(frozen=True)
class TableClassification(Task):
    """Rows of `features` float32 numbers, of `classes` classes. Two classes are one
    score, a logit, with binary cross-entropy (logistic regression: FLamby's
    Fed-Heart-Disease); more are a score per class with cross-entropy."""

    kind: ClassVar[str] = "table-classification"
    plural: ClassVar[str] = "rows"
    features: int
    classes: int

    def scores(self) -> int:
        return 1 if self.classes == 2 else self.classes

    def loss(
        self, scores: torch.Tensor, labels: torch.Tensor, reduction: str = "mean"
    ) -> torch.Tensor:
        if self.classes != 2:
            return super().loss(scores, labels, reduction)
        import torch.nn.functional as F

        return F.binary_cross_entropy_with_logits(
            scores[:, 0], labels.to(scores.dtype), reduction=reduction
        )

    def right(self, scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.classes != 2:
            return super().right(scores, labels)
        return (scores[:, 0] > 0).long() == labels

    def example(self, count: int) -> torch.Tensor:
        import torch

        return torch.zeros((count, self.features), dtype=torch.float32)

    def example_text(self) -> str:
        return f"the data's rows ({self.features} features)"

    def model_facts(self) -> dict[str, object]:
        return {"num_classes": self.scores(), "num_features": self.features}

    def describe(self) -> dict[str, object]:
        return {"task": self.kind, "features": self.features, "classes": self.classes}


@dataclass(frozen=True)
class NextCharacter(Task):
    """Strings of `length` characters (indices into a vocabulary of `classes`, uint8)
    and the character that follows: LEAF's Shakespeare task, scored per character."""

    kind: ClassVar[str] = "next-character"
    plural: ClassVar[str] = "strings"
    length: int
    classes: int

    def inputs(self, batch: torch.Tensor) -> torch.Tensor:
        return batch.long()

    def example(self, count: int) -> torch.Tensor:
        import torch

        return torch.zeros((count, self.length), dtype=torch.uint8)

    def example_text(self) -> str:
        return f"the data's strings ({self.length} characters)"

    def model_facts(self) -> dict[str, object]:
        return {"num_classes": self.classes, "vocabulary": self.classes}

    def describe(self) -> dict[str, object]:
        return {"task": self.kind, "length": self.length, "classes": self.classes}


CIFAR10 = ImageClassification()


def described(facts: dict[str, Any] | None) -> Task:
    """The task `describe` wrote (config.json's data_shape); CIFAR-10's for none."""
    if not facts:
        return CIFAR10
    kind = facts.get("task", ImageClassification.kind)
    if kind == TableClassification.kind:
        return TableClassification(int(facts["features"]), int(facts["classes"]))
    if kind == NextCharacter.kind:
        return NextCharacter(int(facts["length"]), int(facts["classes"]))
    pixels = None
    if "pixel_mean" in facts:
        pixels = PixelStats(tuple(facts["pixel_mean"]), tuple(facts["pixel_std"]))
    return ImageClassification(tuple(facts["image_shape"]), facts["classes"], pixels)  # type: ignore[arg-type]
