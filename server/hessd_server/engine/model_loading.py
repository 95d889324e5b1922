"""``load_model``: Keras files, SavedModel directories, factories and live Keras models."""

from __future__ import annotations

import importlib
import os
import re
import weakref
from pathlib import Path
from typing import Any, Callable

import keras
import numpy as np
import tensorflow as tf

from hessd.errors import ModelLoadError, PrecisionError

from . import tuning_record
from .config import EngineConfig
from .keras_call import KerasCall
from .lookup_ranges import keras_lookup_ranges, probed_lookup_ranges
from .model import Model, TensorInfo
from .recurrent import unroll_short_recurrences
from .runtime import configure_tensorflow
from .warmup import warmup

_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_wrapped: "weakref.WeakKeyDictionary[keras.Model, Model]" = weakref.WeakKeyDictionary()


def load_model(
    source: str | os.PathLike[str] | keras.Model,
    *,
    name: str | None = None,
    config: EngineConfig | None = None,
    safe_mode: bool = True,
) -> Model:
    """Load a model for differentiation.

    Args:
        source: a ``.keras`` file; a SavedModel directory (its ``serve``
            endpoint is called, as ``model.export(dir)`` writes it); a
            ``"package.module:factory"`` string whose factory returns a Keras
            model; or a Keras model object.
        name: the model's name; defaults to the Keras model's name, or the
            file or directory name for a SavedModel.
        config: batch buckets, result byte limit and XLA settings.
        safe_mode: Keras ``safe_mode`` for ``.keras`` files (refuses to
            deserialize arbitrary Python lambdas).

    A Keras model's recurrent layers over sequences of a known length of at
    most :data:`~hessd_server.engine.recurrent.MAX_UNROLLED_STEPS` steps are set
    to ``unroll=True`` (the same function, traced without a loop, which the
    faster ``pfor`` strategy can differentiate), on the model passed in too.

    A ``.keras`` file's or SavedModel folder's tuning records, in a folder
    ``tuning`` beside the file or inside the SavedModel folder (as
    ``hessd-server --write-tuning-records`` writes them into a model
    repository), choose each bucket's strategy unless ``config`` pins one; they
    take precedence over ``config.tuning_cache``.

    Returns:
        A :class:`Model`, thread-safe, to pass to ``hessian``, ``gradient``,
        ``hvp`` and ``evaluate``.

    Raises:
        ModelLoadError: the source does not exist or cannot be loaded.

    >>> m = load_model("hessd_server.engine.demo_model:build_demo_model")
    >>> m.name, m.inputs[0].shape
    ('demo', (10,))
    """
    configure_tensorflow()
    config = config or EngineConfig()
    if isinstance(source, keras.Model):
        return _from_keras(source, name=name, source_text=f"<keras model {source.name}>", config=config)
    text = os.fspath(source)
    if os.path.isdir(text):
        return _from_saved_model(text, name=name, config=config)
    if os.path.isfile(text):
        if not text.endswith(".keras"):
            raise ModelLoadError(f"{text!r} is a file but not a .keras file; save the model with model.save('m.keras')")
        try:
            loaded = keras.saving.load_model(text, compile=False, safe_mode=safe_mode)
        except Exception as err:
            raise ModelLoadError(f"could not load Keras file {text!r}: {err}") from err
        return _from_keras(
            loaded, name=name or _stem(text), source_text=text, config=config, tuning_records=tuning_record.beside(text)
        )
    if _FACTORY.match(text):
        return _from_keras(_call_factory(text), name=name, source_text=text, config=config)
    raise ModelLoadError(
        f"model source {text!r} is neither an existing .keras file, a SavedModel directory, "
        "nor a 'package.module:factory' reference"
    )


def as_model(model: Model | keras.Model) -> Model:
    """The :class:`Model` for ``model``, wrapping (once) a Keras model passed directly."""
    if isinstance(model, Model):
        return model
    if isinstance(model, keras.Model):
        wrapped = _wrapped.get(model)
        if wrapped is None:
            wrapped = _wrapped[model] = load_model(model)
        return wrapped
    raise TypeError(f"expected a hessd_server.Model or a keras.Model, got {type(model).__name__}")


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(os.path.normpath(path)))[0]


def _call_factory(reference: str) -> keras.Model:
    module_name, attribute = reference.split(":")
    try:
        factory: Callable[[], Any] = getattr(importlib.import_module(module_name), attribute)
        built = factory()
    except Exception as err:
        raise ModelLoadError(f"model factory {reference!r} failed: {err}") from err
    if not isinstance(built, keras.Model):
        raise ModelLoadError(f"model factory {reference!r} returned {type(built).__name__}, not a keras.Model")
    return built


def _input_name(raw: str | None, index: int, count: int) -> str:
    """Keras names unnamed inputs ``keras_tensor_N``; callers see ``x`` (or ``x{i}``) instead."""
    if raw and not raw.startswith("keras_tensor"):
        return raw.split(":")[0]
    return "x" if count == 1 else f"x{index}"


def _output_name(raw: str | None, index: int, count: int) -> str:
    if raw and not raw.startswith("keras_tensor"):
        return raw.split(":")[0]
    return "y" if count == 1 else f"y{index}"


def _keras_output_names(model: keras.Model, outputs: list[Any]) -> list[str]:
    """The model's own names for its outputs, in ``outputs`` order: the keys of a
    dict of outputs, else the names of the layers producing them (``price`` for
    ``Dense(1, name="price")``); ``y``/``y{i}`` where neither is known."""
    try:
        structure = model.output
    except (AttributeError, ValueError):
        structure = None
    if isinstance(structure, dict) and len(structure) == len(outputs):
        return [str(key) for key in sorted(structure)]
    names = []
    for index, tensor in enumerate(outputs):
        history = getattr(tensor, "_keras_history", None)
        layer_name = getattr(getattr(history, "operation", None), "name", None)
        names.append(layer_name or _output_name(tensor.name, index, len(outputs)))
    if len(set(names)) != len(names):
        return [f"{name}_{index}" for index, name in enumerate(names)]
    return names


def _per_example_shape(shape: Any) -> tuple[int | None, ...]:
    return tuple(None if d is None else int(d) for d in tuple(shape)[1:])


def _from_keras(
    model: keras.Model, *, name: str | None, source_text: str, config: EngineConfig, tuning_records: Path | None = None
) -> Model:
    try:
        structure = _input_structure(model)
        outputs = list(model.outputs)
    except (AttributeError, ValueError) as err:
        raise ModelLoadError(
            f"Keras model {model.name!r} has no defined inputs; build it with keras.Input(...) "
            f"so its input shape is known ({err})"
        ) from err
    unroll_short_recurrences(model)
    leaves = keras.tree.flatten(structure)
    names = tuple(_input_name(t.name, i, len(leaves)) for i, t in enumerate(leaves))
    inputs = tuple(
        TensorInfo(n, _per_example_shape(t.shape), str(t.dtype)) for n, t in zip(names, leaves)
    )
    output_infos = tuple(
        TensorInfo(output_name, _per_example_shape(t.shape), str(t.dtype))
        for output_name, t in zip(_keras_output_names(model, outputs), outputs)
    )
    return Model(
        name=name or model.name,
        source=source_text,
        call=KerasCall(model, structure, names),
        inputs=inputs,
        outputs=output_infos,
        config=config,
        float64_factory=lambda: KerasCall(*_float64_copy(model), names, weights_of=model),
        warm_up=warmup,
        keep_alive=model,
        input_ranges=keras_lookup_ranges(model, dict(zip(names, leaves))),
        describe=lambda: _keras_architecture(model) + _variable_bytes(model.weights),
        tuning_records=tuning_records,
    )


def _input_structure(model: keras.Model) -> Any:
    """The nest of input tensors the model is called with (a Sequential model
    knows only its flat ``inputs`` until it is first called)."""
    try:
        return model.input
    except AttributeError:
        return model.inputs[0] if len(model.inputs) == 1 else list(model.inputs)


def _float64_copy(model: keras.Model) -> tuple[keras.Model, Any]:
    """A float64 clone of ``model`` (inputs and every layer), with the weights cast.
    Operations of ``keras.ops`` in a functional graph have no dtype of their own:
    they are cloned as they are and compute in their inputs' float64."""

    def float64_layer(layer: keras.layers.Layer) -> keras.layers.Layer:
        config = layer.get_config()
        if "dtype" in config:
            config = {**config, "dtype": "float64"}
        return layer.__class__.from_config(config)

    try:
        inputs = keras.tree.map_structure(
            lambda t: keras.Input(batch_shape=t.shape, dtype="float64", name=t.name), _input_structure(model)
        )
        clone = keras.models.clone_model(model, input_tensors=inputs, clone_function=float64_layer)
        clone.set_weights([np.asarray(w, dtype=np.float64) for w in model.get_weights()])
    except Exception as err:
        raise PrecisionError(
            f"could not build a float64 copy of model {model.name!r} ({err}); use precision='float32'",
            field="precision",
        ) from err
    return clone, _input_structure(clone)


def _from_saved_model(path: str, *, name: str | None, config: EngineConfig) -> Model:
    try:
        loaded = tf.saved_model.load(path)
        endpoint = loaded.serve
        signature = endpoint.input_signature
    except Exception as err:
        raise ModelLoadError(
            f"could not load SavedModel {path!r} with a 'serve' endpoint (write it with model.export(dir)): {err}"
        ) from err
    specs = tf.nest.flatten(signature)
    names = tuple(_input_name(s.name, i, len(specs)) for i, s in enumerate(specs))
    inputs = tuple(
        TensorInfo(n, _per_example_shape(s.shape), s.dtype.name) for n, s in zip(names, specs)
    )
    output_specs = tf.nest.flatten(loaded.signatures["serve"].structured_outputs) if "serve" in loaded.signatures else []
    outputs = tuple(
        TensorInfo(_output_name(s.name, i, len(output_specs)), _per_example_shape(s.shape), s.dtype.name)
        for i, s in enumerate(output_specs)
    )

    def call(named: Any) -> Any:
        return endpoint(*tf.nest.pack_sequence_as(signature, [named[n] for n in names]))

    return Model(
        name=name or _stem(path),
        source=path,
        call=call,
        inputs=inputs,
        outputs=outputs,
        config=config,
        float64_factory=None,
        warm_up=warmup,
        keep_alive=loaded,
        input_ranges=probed_lookup_ranges(call, inputs),
        describe=lambda: _saved_model_graph(path) + _variable_bytes(getattr(loaded, "variables", ())),
        tuning_records=tuning_record.beside(path),
    )


def _saved_model_graph(path: str) -> bytes:
    """The SavedModel's serialized graph (``saved_model.pb``), or nothing where it cannot be read."""
    try:
        with open(os.path.join(path, "saved_model.pb"), "rb") as graph:
            return graph.read()
    except OSError:
        return b""


def _keras_architecture(model: keras.Model) -> bytes:
    """The model's layers' classes and configurations, in order, without their
    names (Keras numbers unnamed layers by how many a process made before)."""
    layers = []
    for layer in model.layers:
        try:
            config = {k: v for k, v in layer.get_config().items() if k != "name"}
        except Exception:  # a custom layer without get_config
            config = {}
        layers.append((type(layer).__qualname__, config))
    return repr(layers).encode()


def _variable_bytes(variables: Any) -> bytes:
    """Every variable's shape, dtype and values, in order."""
    parts = []
    for variable in variables:
        value = np.asarray(variable)
        parts.append(f"{value.shape} {value.dtype}".encode())
        parts.append(np.ascontiguousarray(value).tobytes())
    return b"\0".join(parts)
