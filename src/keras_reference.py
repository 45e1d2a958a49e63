"""The same configuration trained by real Keras 3 (TensorFlow backend) ``model.fit``, and the
worker processes that run many of them side by side.

Builds the seed model, ``Sequential([Input((1,)), Dense(1)])`` with MSE, with the optimizer's
Keras class and the configuration's hyperparameters, starts it from exactly the engine's
initial weights (``set_weights``) and trains with ``fit(shuffle=False, batch_size=...,
epochs=..., verbose=0)``. TensorFlow is imported only when a run is asked for, so the rest of
the package works without it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from typing import NamedTuple, TypedDict

import numpy as np

from src import optimizers as opt
from src.errors import InputError
from src.problem import QUERY_X

INSTALL_HINT = "pip install tensorflow-cpu  (Keras 3 with the TensorFlow backend)"


class KerasRun(NamedTuple):
    """``History`` losses, final weights and ``predict(np.array([x_query]))``."""

    history: np.ndarray
    w: float
    b: float
    prediction: float


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


def fit(
    optimizer: str,
    lr: float,
    x: np.ndarray,
    y: np.ndarray,
    w0: float,
    b0: float = 0.0,
    batch_size: int = 32,
    epochs: int = 500,
    hyperparameters: Mapping[str, float] | None = None,
    x_query: float = QUERY_X,
) -> KerasRun:
    """Train one configuration in Keras, from the given initial weights."""
    keras = _keras()
    spec = opt.get(optimizer)
    cls = spec.keras[0]
    args = spec.keras_kwargs(hyperparameters or {})
    model = keras.Sequential([keras.Input(shape=(1,)), keras.layers.Dense(1)])
    model.compile(
        optimizer=getattr(keras.optimizers, cls)(learning_rate=lr, **args),
        loss="mean_squared_error",
    )
    model.set_weights([np.array([[w0]], np.float32), np.array([b0], np.float32)])
    xs = np.asarray(x, np.float32).reshape(-1, 1)
    ys = np.asarray(y, np.float32).reshape(-1, 1)
    hist = model.fit(xs, ys, batch_size=batch_size, epochs=epochs, shuffle=False, verbose=0)
    kernel, bias = model.get_weights()
    pred = model.predict(np.array([x_query], np.float32), verbose=0)
    return KerasRun(
        history=np.asarray(hist.history["loss"], np.float64),
        w=float(kernel.ravel()[0]),
        b=float(bias.ravel()[0]),
        prediction=float(np.asarray(pred).ravel()[0]),
    )


# ----------------------------------------------------------------------------- workers


class KerasJob(TypedDict):
    """The arguments of one :func:`fit`, as a worker process receives them."""

    optimizer: str
    lr: float
    x: np.ndarray
    y: np.ndarray
    w0: float
    b0: float
    batch_size: int
    epochs: int
    hyperparameters: dict[str, float]
    x_query: float


class KerasResult(NamedTuple):
    """One Keras run: ``History`` losses, final weights, prediction (nan after an error)."""

    history: np.ndarray
    w: float
    b: float
    prediction: float
    seconds: float
    error: str | None
    versions: Mapping[str, str]


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
        run = fit(**job)
    except Exception as e:  # one failed run must not lose the others
        nan = math.nan
        return KerasResult(np.full(0, nan), nan, nan, nan, time.perf_counter() - t0, repr(e), {})
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
    )


def keras_pool(workers: int) -> ProcessPoolExecutor:
    """``workers`` spawned processes, each with one TensorFlow thread (:func:`_init_worker`)."""
    context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker)


def submit_keras(
    pool: ProcessPoolExecutor, jobs: Sequence[KerasJob]
) -> dict[Future[KerasResult], int]:
    """Every job handed to ``pool``, longest first; returns future -> job index."""
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
