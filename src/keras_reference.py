"""The same configuration trained by real Keras 3 (TensorFlow backend) ``model.fit``, and the
worker processes that run many of them side by side.

Builds ``Sequential([Input((d,)), Dense(1)])`` with MSE -- ``d`` input features, ``d = 1``
being the seed model -- with the optimizer's Keras class and the configuration's
hyperparameters, starts it from exactly the engine's initial weights (``set_weights``) and
trains with ``fit(shuffle=False, batch_size=..., epochs=..., verbose=0)``. On request it
trains with ``shuffle=True`` from a ``keras.utils.set_random_seed`` seed and reads back the
order in which Keras fed the samples (so the engine can replay it), and it can run the whole
of Keras in float64. TensorFlow is imported only when a run is asked for, so the rest of the
package works without it.

``fit(x, y)`` on arrays spends most of its time outside the arithmetic: for the seed model
(``Dense(1)``, N <= 64, one or two batches an epoch) Keras 3.15 builds a new ``tf.data``
iterator over its shuffling pipeline at the start of every epoch and another one at its end
(which the next epoch discards). Building one instantiates the pipeline's functions afresh:
cProfile of 300 epochs (N = 20) put 61% of ``fit``'s time there, 7% in the training step,
4% in metric resets and results, the rest in ``fit``'s own loop. So :func:`fit` hands
``model.fit`` that same pipeline, built once by Keras's own data adapter and repeated, with
``steps_per_epoch`` = its batches (:func:`_repeated_epochs`): the same ``train_function``,
batches, callbacks and ``History``, one iterator for the whole run; 2-3.6 ms per epoch against
63-90 ms, side by side on the busy 2-core machine. ``tests/test_keras_fast_fit.py`` checks the
``History``, weights and prediction bit for bit against the plain call for every optimizer;
``plain=True`` runs the plain call. (``steps_per_execution`` is no help: with one batch an
epoch it would run into the next epoch's batches.)
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import multiprocessing
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from typing import NamedTuple, NotRequired, TypedDict

import numpy as np

from src import optimizers as opt
from src.errors import InputError
from src.problem import QUERY_X

INSTALL_HINT = "pip install tensorflow-cpu  (Keras 3 with the TensorFlow backend)"

DTYPES = ("float32", "float64")
"""The precisions a Keras run can take (``keras.config.floatx`` for the run)."""


class KerasRun(NamedTuple):
    """``History`` losses, final weights and ``predict(x_query.reshape(1, d))``.

    ``w``: the FIRST kernel entry (the whole kernel where ``d = 1``, the seed's case);
    ``weights``: the whole kernel, float64 of shape ``(d,)``.

    ``orders``: with ``shuffle``, the sample indices (rows of ``x``, ``y``) in the order Keras's
    batches held them, one row of N per epoch (int32, shape ``(epochs, N)``): consecutive
    batches of ``batch_size``, the last one partial. None without shuffle."""

    history: np.ndarray
    w: float
    b: float
    prediction: float
    orders: np.ndarray | None = None
    weights: np.ndarray | None = None


def available() -> bool:
    """Whether TensorFlow (and so Keras's TensorFlow backend) is installed.

    Looks the package up without importing it: the import alone takes seconds, and the
    main job runs Keras in worker processes."""
    return importlib.util.find_spec("tensorflow") is not None


def _keras():  # noqa: ANN202
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import keras
    except ImportError:
        raise InputError(f"Keras/TensorFlow is not installed: {INSTALL_HINT}") from None
    if keras.backend.backend() != "tensorflow":
        raise InputError(f"Keras runs on {keras.backend.backend()}, not tensorflow (KERAS_BACKEND)")
    return keras


@contextlib.contextmanager
def _floatx(keras, dtype: str) -> Iterator[None]:  # noqa: ANN001
    """Keras's ``floatx`` and its global dtype policy set to ``dtype`` for a while, then
    restored (even on error).

    Both: losses, metrics and optimizers take ``floatx`` when built, layers the global
    policy, which Keras fixes at its first use (from the ``floatx`` of that moment) and
    which ``set_floatx`` alone would then leave at float32."""
    saved_floatx, saved_policy = keras.config.floatx(), keras.config.dtype_policy()
    try:
        keras.config.set_floatx(dtype)
        keras.config.set_dtype_policy(dtype)
        yield
    finally:
        keras.config.set_floatx(saved_floatx)
        keras.config.set_dtype_policy(saved_policy)


def _recording_sequential(keras, buffer, filled):  # noqa: ANN001, ANN202
    """A ``keras.Sequential`` whose training step first copies its batch, the rows
    ``concat([x, y], axis=1)`` (``x``'s ``d`` features, then ``y``), into ``buffer`` (a
    ``tf.Variable`` of shape ``(epochs·N, d + 1)``) at row ``filled`` (an int32
    ``tf.Variable``, then advanced by the batch size), then runs Keras's own ``train_step`` on
    the untouched batch.

    The copy reads the batch and writes only these two variables, which nothing of the model
    reads: every op of Keras's step gets the same inputs as without it, and the ``tf.data``
    pipeline (where the shuffle happens) is built by Keras exactly as in a plain run. The
    variables live in this closure, not on the model, so they are not model weights either.
    ``tests/test_keras_order.py`` checks that the ``History`` and the final weights are
    bit-identical to a plain ``fit`` for every optimizer."""
    import tensorflow as tf

    class RecordingSequential(keras.Sequential):
        def train_step(self, data):  # noqa: ANN001, ANN202
            x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
            rows = tf.concat([x, y], axis=1)
            at = filled + tf.range(tf.shape(rows)[0], dtype=filled.dtype)
            buffer.scatter_nd_update(at[:, None], rows)
            filled.assign_add(tf.shape(rows, out_type=filled.dtype)[0])
            return super().train_step(data)

    return RecordingSequential


def sample_orders(rows: np.ndarray, xs: np.ndarray, ys: np.ndarray, epochs: int) -> np.ndarray:
    """The indices of the rows of ``(xs, ys)`` that the recorded ``rows`` (``(epochs·N, d + 1)``:
    each sample's ``d`` features then its target, in the order training saw them) are, one row
    of N per epoch (int32). ``xs``: ``(N,)`` (``d = 1``, the seed's case) or ``(N, d)``.

    Rows are matched by the exact bits of the whole row, every feature and the target. Identical
    rows are interchangeable (their arithmetic is identical), so within an epoch each value takes
    the indices holding it in increasing order. Raises ``RuntimeError`` if an epoch is not a
    permutation of the data."""
    xs, ys = np.asarray(xs), np.asarray(ys)
    features = xs.reshape(-1, 1) if xs.ndim == 1 else xs
    data = np.concatenate([features, ys.reshape(-1, 1)], axis=1)
    n, width = data.shape
    rows = np.asarray(rows, data.dtype)
    if rows.shape != (epochs * n, width):
        raise RuntimeError(f"recorded {rows.shape} sample rows, expected {(epochs * n, width)}")
    keys = [r.tobytes() for r in data]
    orders = np.empty((epochs, n), np.int32)
    for e in range(epochs):
        free: dict[bytes, deque[int]] = {}
        for i, k in enumerate(keys):
            free.setdefault(k, deque()).append(i)
        for j, row in enumerate(rows[e * n : (e + 1) * n]):
            left = free.get(row.tobytes())
            if not left:
                raise RuntimeError(f"epoch {e + 1}: batch row {j} {row} is not a free sample")
            orders[e, j] = left.popleft()
    return orders


def _features(x: np.ndarray, dtype: str) -> np.ndarray:
    """``x`` as the ``(N, d)`` array Keras is fed: ``(N,)`` is one feature (``d = 1``)."""
    xs = np.asarray(x, dtype)
    if xs.ndim == 1:
        return xs.reshape(-1, 1)
    if xs.ndim != 2 or xs.shape[1] < 1:
        raise InputError(f"x must have shape (n,) or (n, d) with d >= 1, not {xs.shape}")
    return xs


def _per_feature(
    value: float | Sequence[float] | np.ndarray, d: int, name: str, dtype: str
) -> np.ndarray:
    """``value`` (a float, or ``d`` floats) as a flat array of the ``d`` features' values."""
    flat = np.asarray(value, dtype).reshape(-1)
    if flat.size != d:
        raise InputError(f"{name} must hold one value per feature (d = {d}), not {flat.size}")
    return flat


def _repeated_epochs(
    xs: np.ndarray, ys: np.ndarray, batch_size: int, shuffle: bool, fresh: bool
) -> tuple[object, int]:
    """Keras's own input pipeline of ``fit(xs, ys, batch_size=..., shuffle=...)`` for every
    epoch of a run as one ``tf.data.Dataset``, and its batches per epoch.

    The pipeline is the one ``fit`` builds from arrays (its data adapter's ``get_tf_dataset``:
    the shuffling permutation, the batching, the gather), so each epoch's batches are the very
    tensors ``fit`` would feed. Plain ``fit`` restarts it every epoch with a new iterator, and a
    new iterator instantiates the pipeline's functions afresh, ``tf.random.shuffle`` included,
    which is why a seeded plain ``fit`` repeats its first permutation in every epoch (and an
    unseeded one draws a fresh one, from a fresh random seed). Here one iterator serves the
    whole run: with ``fresh`` the pipeline is repeated, and its one shuffle op draws the next
    permutation of its stream each epoch (seeded: a reproducible stream); without it the first
    epoch's batches are cached and fed again every epoch, as a seeded or unshuffled plain
    ``fit`` feeds them."""
    from keras.src.trainers.data_adapters import get_data_adapter

    adapter = get_data_adapter(x=xs, y=ys, batch_size=batch_size, shuffle=shuffle)
    one_epoch = adapter.get_tf_dataset()
    epochs = one_epoch.repeat() if fresh else one_epoch.cache().repeat()
    return epochs, int(adapter.num_batches)


def fit(
    optimizer: str,
    lr: float,
    x: np.ndarray,
    y: np.ndarray,
    w0: float | Sequence[float] | np.ndarray,
    b0: float = 0.0,
    batch_size: int = 32,
    epochs: int = 500,
    hyperparameters: Mapping[str, float] | None = None,
    x_query: float | Sequence[float] | np.ndarray = QUERY_X,
    *,
    shuffle: bool = False,
    seed: int | None = 0,
    dtype: str = "float32",
    reshuffle: bool = False,
    plain: bool = False,
) -> KerasRun:
    """Train one configuration in Keras, from the given initial weights.

    ``d`` is the number of input features: ``x`` is ``(N,)`` -- one feature, ``d = 1``, the
    seed's case -- or ``(N, d)``; the model is ``Sequential([Input((d,)), Dense(1)])`` and the
    data go in as ``(N, d)``, with ``y`` as ``(N, 1)``. ``w0``: the initial kernel, a float
    (``d = 1``) or ``d`` floats (set as ``np.asarray(w0).reshape(d, 1)``); ``b0`` the bias.
    ``x_query``: where to predict, a float (``d = 1``) or ``d`` floats
    (``predict(x_query.reshape(1, d))``; the default, the seed's query point, is for
    ``d = 1``). A ``w0`` or ``x_query`` without exactly ``d`` values is an
    :class:`~src.errors.InputError`. The run's ``w`` is the first kernel entry and its
    ``weights`` the whole kernel, ``(d,)`` float64.

    ``shuffle``: ``keras.utils.set_random_seed(seed)`` before the model is built, then
    ``fit(shuffle=True)``: Keras's ``tf.random.shuffle`` order, reproducible for a seed within
    one Keras/TensorFlow version. Measured in Keras 3.15.1 / TensorFlow 2.21: once seeded,
    that order is the SAME permutation in every epoch (the shuffle is a seeded op in a
    ``tf.data`` map that each epoch re-iterates from the start). ``seed=None`` clears
    TensorFlow's global seed instead (``tf.random.set_seed(None)``), as in a process that
    never seeds: every epoch then draws a fresh permutation, not reproducible, but recorded
    all the same. The run's ``orders`` say which samples each batch held (see
    :func:`_recording_sequential`: recording them leaves the arithmetic, ``History`` and
    weights bit for bit as a plain ``fit``). Without ``shuffle`` the data go in their given
    order (``fit(shuffle=False)``, ``seed`` unused) and ``orders`` is None.

    ``reshuffle`` (with ``shuffle`` and a ``seed``): every epoch a fresh permutation, as an
    unseeded ``fit`` draws them, but from the stream ``seed`` starts, so the orders are
    reproducible (a seeded plain ``fit`` cannot do that: it repeats its first permutation).
    Unseeded, every epoch is fresh anyway. ``plain``: Keras's own ``fit(x, y, ...)`` over the
    arrays, a new pipeline iterator every epoch; the default feeds ``fit`` the same pipeline
    repeated (:func:`_repeated_epochs`), bit for bit the same ``History`` and weights at a
    few percent of the per-epoch cost. ``plain`` with ``reshuffle`` and a seed is an
    :class:`~src.errors.InputError`.

    ``dtype``: ``"float32"`` (Keras's default) or ``"float64"``: then
    ``keras.config.floatx()`` is float64 for the call (restored afterwards, even on error), so
    the input, the Dense layer, the data, the initial weights, the loss and its ``History``
    mean are float64, and so is every optimizer variable: the learning rate is a float64
    variable holding the given ``lr`` unrounded (not float32's 0.0099999998 for 0.01), the
    slots follow the weights' dtype, and only the ``iterations`` counter stays int64. The other
    hyperparameters are Python floats, used in two ways: directly in arithmetic with a float64
    tensor they stay exact (Adam's ``1 - beta_1``, epsilon), but ``ops.cast(value, float64)``
    -- TensorFlow's ``tf.cast`` -- first makes a float32 tensor of the Python float, so a
    hyperparameter an update casts (SGD's momentum, Adam's betas in ``beta^t``, ...) is
    float32-rounded even in a float64 run. The engine does the same at the same places
    (:func:`src.keras_optax.keras_cast`); docs/keras-fidelity.md lists them.
    """
    if dtype not in DTYPES:
        raise InputError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    fresh = shuffle and (reshuffle or seed is None)  # a new permutation every epoch
    if plain and shuffle and reshuffle and seed is not None:
        raise InputError("a seeded plain fit repeats its first permutation: no reshuffle")
    keras = _keras()
    spec = opt.get(optimizer)
    cls = spec.keras[0]
    args = spec.keras_kwargs(hyperparameters or {})
    xs = _features(x, dtype)
    n, d = xs.shape
    ys = np.asarray(y, dtype).reshape(-1, 1)
    if len(ys) != n:
        raise InputError(f"x has {n} samples, y {len(ys)}")
    kernel0 = _per_feature(w0, d, "w0", dtype).reshape(d, 1)
    query = _per_feature(x_query, d, "x_query", dtype).reshape(1, d)
    with _floatx(keras, dtype):
        model_class = keras.Sequential
        if shuffle:
            import tensorflow as tf

            if seed is None:
                tf.random.set_seed(None)  # no global seed: a fresh permutation every epoch
            else:
                keras.utils.set_random_seed(seed)
            buffer = tf.Variable(tf.zeros((epochs * n, d + 1), dtype), trainable=False)
            filled = tf.Variable(0, dtype=tf.int32, trainable=False)
            model_class = _recording_sequential(keras, buffer, filled)
        layers = [keras.Input(shape=(d,), dtype=dtype), keras.layers.Dense(1, dtype=dtype)]
        model = model_class(layers)
        model.compile(
            optimizer=getattr(keras.optimizers, cls)(learning_rate=lr, **args),
            loss="mean_squared_error",
        )
        model.set_weights([kernel0, np.array([b0], dtype)])
        if plain:
            hist = model.fit(
                xs, ys, batch_size=batch_size, epochs=epochs, shuffle=shuffle, verbose=0
            )
        else:
            data, steps = _repeated_epochs(xs, ys, batch_size, shuffle, fresh)
            hist = model.fit(data, epochs=epochs, steps_per_epoch=steps, shuffle=False, verbose=0)
        kernel, bias = model.get_weights()
        pred = model.predict(query, verbose=0)
    orders = None
    if shuffle:
        recorded = buffer.numpy()[: int(filled.numpy())]
        orders = sample_orders(recorded, xs, ys, epochs)
    return KerasRun(
        history=np.asarray(hist.history["loss"], np.float64),
        w=float(kernel.ravel()[0]),
        b=float(bias.ravel()[0]),
        prediction=float(np.asarray(pred).ravel()[0]),
        orders=orders,
        weights=np.asarray(kernel, np.float64).reshape(-1),
    )


# ----------------------------------------------------------------------------- workers


class KerasJob(TypedDict):
    """The arguments of one :func:`fit`, as a worker process receives them: ``x`` is ``(N,)``
    (one feature, ``d = 1``, the seed's case) or ``(N, d)``; ``w0`` and ``x_query`` a float
    (``d = 1``) or ``d`` floats. The worker always takes :func:`fit`'s default (repeated
    pipeline) path."""

    optimizer: str
    lr: float
    x: np.ndarray
    y: np.ndarray
    w0: float | list[float] | np.ndarray
    b0: float
    batch_size: int
    epochs: int
    hyperparameters: dict[str, float]
    x_query: float | list[float] | np.ndarray
    shuffle: NotRequired[bool]
    seed: NotRequired[int | None]
    dtype: NotRequired[str]
    reshuffle: NotRequired[bool]


class KerasResult(NamedTuple):
    """One Keras run: ``History`` losses, final weights, prediction (nan after an error), and
    with ``shuffle`` the sample order of every epoch (:attr:`KerasRun.orders`; None without
    shuffle or after an error). ``w`` is the first kernel entry; ``weights`` the whole kernel,
    float64 ``(d,)`` (:attr:`KerasRun.weights`; None after an error)."""

    history: np.ndarray
    w: float
    b: float
    prediction: float
    seconds: float
    error: str | None
    versions: Mapping[str, str]
    orders: np.ndarray | None = None
    weights: np.ndarray | None = None


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """File descriptor 2 to /dev/null for a while: TensorFlow's C++ start-up lines ("oneDNN
    custom operations are on", ...) ignore ``TF_CPP_MIN_LOG_LEVEL``."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _init_worker() -> None:
    """A Keras worker: TensorFlow's op thread pools cut to one thread each (the workers are the
    parallelism; two runs side by side measured 37 ms per epoch each, against 57 ms without),
    and its start-up lines kept off the terminal."""
    for key in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
        os.environ[key] = "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    try:
        with quiet_stderr():
            import keras  # noqa: F401
            import tensorflow as tf
    except ImportError:
        return  # reported per run by keras_reference
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    # Every run builds a fresh model, whose predict function TensorFlow then warns it retraced.
    tf.get_logger().setLevel("ERROR")


def keras_run(job: KerasJob) -> KerasResult:
    """One configuration in Keras (runs in a worker process; errors are returned, not raised)."""
    t0 = time.perf_counter()
    try:
        # TensorFlow's graph optimiser logs "Not handling type DT_DOUBLE" from C++ on float64
        # runs, past TF_CPP_MIN_LOG_LEVEL: the worker's terminal lines are not the user's.
        with quiet_stderr():
            run = fit(**job)
    except Exception as e:  # one failed run must not lose the others
        nan = math.nan
        seconds = time.perf_counter() - t0
        return KerasResult(np.full(0, nan), nan, nan, nan, seconds, repr(e), {}, None, None)
    import keras
    import tensorflow as tf

    return KerasResult(
        history=run.history,
        w=run.w,
        b=run.b,
        prediction=run.prediction,
        seconds=time.perf_counter() - t0,
        error=None,
        versions={"keras": keras.__version__, "tensorflow": tf.__version__},
        orders=run.orders,
        weights=run.weights,
    )


def keras_pool(workers: int) -> ProcessPoolExecutor:
    """``workers`` spawned processes, each with one TensorFlow thread (:func:`_init_worker`)."""
    context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker)


def submit_keras(
    pool: ProcessPoolExecutor, jobs: Sequence[KerasJob]
) -> dict[Future[KerasResult], int]:
    """Every job handed to ``pool``, longest first (steps: epochs times batches of the ``N`` rows
    of ``x``, whatever its ``d``); returns future -> job index."""
    cost = [j["epochs"] * -(-len(j["x"]) // j["batch_size"]) for j in jobs]
    order = sorted(range(len(jobs)), key=lambda i: -cost[i])
    return {pool.submit(keras_run, jobs[i]): i for i in order}


def collect_keras(
    futures: Mapping[Future[KerasResult], int], progress: Callable[[int], None] | None
) -> list[KerasResult]:
    """The results of :func:`submit_keras`'s futures, in job order, as they complete."""
    results: list[KerasResult | None] = [None] * len(futures)
    for future in as_completed(futures):
        results[futures[future]] = future.result()
        if progress:
            progress(1)
    return [r for r in results if r is not None]
