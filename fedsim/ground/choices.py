"""The values options take: each list of choices, and each limit, defined once here
(fedsim.ground.config declares the options that take them)."""

HUB_CIFAR10 = "uoft-cs/cifar10"
CLIENT_OPTIMIZERS = (SGD, ADAM) = ("sgd", "adam")  # --client-optimizer's choices
MAX_SEED = 2**32 - 1  # numpy and torch both take it; a common bound users know
# Beyond this a round spends no measurable privacy (ε rounds to 0) and dp-accounting's
# Rényi accountant fails (a math domain error from about 3·10⁸)
MAX_NOISE_MULTIPLIER = 1e6
RAY_RESOURCE_UNIT = 1e-4  # Ray counts CPUs and GPUs in units of 1/10,000 (its FixedPoint)

# --vectorize: clients of a bundle trained at once (fedsim.learning.together)
VECTORIZE = (AUTO, ON, OFF) = ("auto", "on", "off")

# --dp's modes (fedsim.algorithms.privacy wraps the strategy for each but `off`)
DP_MODES = (DP_OFF, SERVER_FIXED, SERVER_ADAPTIVE, CLIENT_FIXED) = (
    "off",
    "server-fixed",
    "server-adaptive",
    "client-fixed",
)
