"""ComfyUI's memory manager for the models the pack loads itself: the LLM of PSA Encode Profile and of PSA Rewrite
Prompt (docs/comfyui.md §7).

`ComfyPlacement` is psa_core's placement (psa_core/encoders/placement.py) for ComfyUI:

1. transformers loads the model on ComfyUI's offload device for text encoders (the CPU), local files only;
2. every layer that holds weights is made streamable the way ComfyUI's own layers are: `nn.Linear` and
   `nn.Embedding` become `comfy.ops.disable_weight_init.Linear`/`Embedding` (same forward; with
   `comfy_cast_weights` set they copy their weights to the input's device for the call), any other such layer (the
   RMS norms) gets the same switch around its own forward;
3. it is wrapped in a `comfy.model_patcher.ModelPatcher` (load device: ComfyUI's device; offload device: the CPU)
   and loaded with `comfy.model_management.load_models_gpu(..., memory_required=<the forward's working memory>)`:
   ComfyUI evicts other models as far as needed, then loads the LLM fully when it fits and partially when it does
   not (its low-VRAM mode: the layers that do not fit stay in RAM and are streamed to the GPU layer by layer);
4. the loaded model is kept, one at a time, for the next node that needs the same model and precision on the same
   device (the five PSA Encode Profile nodes of the comparison workflow load it once). ComfyUI may unload it like
   any model when another one needs the memory (partially, or fully); once it unloads it fully, or the user presses
   Unload Models, the pack lets go of it too, so its RAM is returned.

Every use is logged with where the model ran and why (`[PSA] LLM loaded: ...` / `[PSA] LLM reused: ...`).
"""
from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..psa_core.encoders.placement import (
    CPU,
    FULL,
    LOAD,
    PARTIAL,
    RUN,
    ModelRequest,
    Placed,
    Placement,
    Progress,
    build_reporting,
    size_text,
)

log = logging.getLogger(__name__)
LOG_PREFIX = "[PSA] LLM"
DEVICES = ("auto", "cpu")  # the `device` combo
DEVICE_TOOLTIP = (
    "Where the LLM runs. 'auto': ComfyUI's device, under ComfyUI's memory manager: other models are moved out as far "
    "as needed, then the whole LLM goes on the GPU when it fits beside the memory its forward pass needs, otherwise "
    "it is loaded partially (low-VRAM mode: the layers that do not fit stay in RAM and are copied to the GPU one at "
    "a time); on the CPU when ComfyUI has no GPU or runs with --cpu. 'cpu': always on the CPU (slow, uses no GPU "
    "memory). The model stays loaded for the next node that uses the same LLM and precision, until ComfyUI needs "
    "the memory or Unload Models is pressed. The log says where it ran and why. Results do not depend on this "
    "choice beyond rounding.")


# ---- streamable layers ------------------------------------------------------------------------------------

class _StreamedParameters:
    """ComfyUI's casting switch for a layer of any class: with `comfy_cast_weights` set (ComfyUI sets it on the
    layers it leaves offloaded), the layer's own forward runs with its parameters copied to the device of its first
    tensor input (and ComfyUI's weight functions applied, as comfy.ops.cast_bias_weight does)."""

    comfy_cast_weights = False
    weight_function: list = []  # noqa: RUF012  (comfy.ops.CastWeightBiasOp's protocol: ComfyUI replaces them per layer)
    bias_function: list = []  # noqa: RUF012

    def forward(self, *args, **kwargs):
        if not (self.comfy_cast_weights or self.weight_function or self.bias_function):
            return super().forward(*args, **kwargs)
        device = next((a.device for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
        originals = dict(self._parameters)
        try:
            for name, parameter in originals.items():
                if parameter is None:
                    continue
                value = parameter if device is None else parameter.to(device)
                for function in {"weight": self.weight_function, "bias": self.bias_function}.get(name, ()):
                    value = function(value)
                self._parameters[name] = value
            return super().forward(*args, **kwargs)
        finally:
            self._parameters.update(originals)


@functools.cache
def _streamed_class(cls: type) -> type:
    return type(cls.__name__, (_StreamedParameters, cls), {"__module__": cls.__module__,
                                                           "__qualname__": cls.__qualname__})


def make_streamable(model: torch.nn.Module) -> list[str]:
    """Make every weight-holding layer of `model` one that ComfyUI can leave offloaded (above). Returns the names of
    the modules it cannot stream: those that hold weights beside sub-modules (ComfyUI never moves them separately)
    or parameters other than `weight` and `bias`; a model with any must be loaded fully (none in Qwen2 or Llama)."""
    import comfy.ops

    ops = comfy.ops.disable_weight_init
    mixed = []
    for name, module in model.named_modules():
        own = dict(module.named_parameters(recurse=False))
        if not own or hasattr(module, "comfy_cast_weights"):
            continue
        if (any(True for _, p in module.named_parameters() if all(p is not q for q in own.values()))
                or not set(own) <= {"weight", "bias"} or "weight" not in own):
            mixed.append(name)  # ComfyUI streams only a leaf's `weight` and `bias`
        elif type(module) is torch.nn.Linear:
            module.__class__ = ops.Linear
        elif type(module) is torch.nn.Embedding:
            module.__class__ = ops.Embedding
            module.bias = None  # what comfy.ops' Embedding sets when it is built
        else:
            module.__class__ = _streamed_class(type(module))
            if "bias" not in own:
                module.bias = None  # ComfyUI reads `bias` of every layer it streams
    return mixed


@functools.cache
def _pinned_class(cls: type) -> type:
    original = cls.device

    def device(self):
        pinned = self.__dict__.get("_psa_input_device")
        return pinned if pinned is not None else original.fget(self)

    return type(cls.__name__, (cls,), {"__module__": cls.__module__, "__qualname__": cls.__qualname__,
                                        "device": property(device)})


def pin_input_device(model: torch.nn.Module, device: torch.device) -> None:
    """A Hugging Face model reports the device of its first parameter as `model.device`, and `generate` moves its
    inputs there; under a partial load that parameter may be offloaded. Make it report `device` (where ComfyUI
    runs it) instead."""
    if isinstance(getattr(type(model), "device", None), property):
        model.__class__ = _pinned_class(type(model))
        model.__dict__["_psa_input_device"] = device


class _LLMHolder(torch.nn.Module):
    """What the ModelPatcher holds: the Hugging Face model as `llm`, its dtype (`get_dtype`, which ComfyUI asks for),
    and a plain `device` attribute that ComfyUI sets (a Hugging Face model's own `device` is read-only)."""

    def __init__(self, llm: torch.nn.Module, dtype: torch.dtype):
        super().__init__()
        self.llm = llm
        self._dtype = dtype

    def get_dtype(self) -> torch.dtype:
        return self._dtype


def _buffers_follow(patcher, device_to, *_args) -> None:
    """ON_LOAD: a partial load moves only the layers it loads; move the (small) buffers of the others too, so that a
    layer streamed from RAM finds them on its device."""
    if device_to is None:
        return
    for module in patcher.model.modules():
        for name, buffer in module._buffers.items():
            if buffer is not None and buffer.device != torch.device(device_to):
                module._buffers[name] = buffer.to(device_to)


# ---- the kept model ----------------------------------------------------------------------------------------

@dataclass
class _Kept:
    key: tuple
    label: str
    patcher: object  # comfy.model_patcher.ModelPatcher
    model: torch.nn.Module  # the Hugging Face model inside it
    full_only: bool  # weights ComfyUI cannot stream: load fully
    loaded_in: str | None  # prompt id
    loaded_by: str | None  # node id


_kept: dict[tuple, _Kept] = {}  # at most one: an LLM is large
_unloaded: list = []  # patchers ComfyUI unloaded, their weights already dropped; let go at the next use


def kept_models() -> list[_Kept]:
    """The kept LLM (none or one), for tests and logs."""
    return list(_kept.values())


def _executing() -> tuple[str | None, str | None]:
    try:
        from comfy_execution.utils import get_executing_context
    except ImportError:
        return None, None
    context = get_executing_context()
    return (context.prompt_id, context.node_id) if context is not None else (None, None)


def node_label() -> str:
    """" (node <id>)" for the node ComfyUI is executing, or nothing outside a prompt run."""
    _, node_id = _executing()
    return f" (node {node_id})" if node_id is not None else ""


def _on_detach(key: tuple, patcher, unpatch_all: bool = True, *_args) -> None:
    """ON_DETACH with `unpatch_all`: ComfyUI unloaded the model fully (room for another model, or Unload Models):
    let it go. (`load_models_gpu` also detaches a model it is about to load again without unpatching it: its
    bookkeeping, the weights stay.)"""
    kept = _kept.get(key) if _kept is not None else None  # (None at interpreter exit)
    if unpatch_all and kept is not None and kept.patcher is patcher:
        del _kept[key]
        # Let go of the weights now, but not of the patcher: it must outlive ComfyUI's unloading loop, which is
        # still walking its list of loaded models (a patcher that died here would be removed from it mid-walk).
        patcher.model.llm = None
        _unloaded.append(patcher)
        log.info("%s released: %s; ComfyUI unloaded it (memory for another model, or Unload Models), so its RAM is "
                 "returned too; the next node that needs it loads it again", LOG_PREFIX, kept.label)


def release_kept(reason: str = "asked to") -> None:
    """Unload the kept LLM through ComfyUI's manager and let it go."""
    import comfy.model_management as mm

    _unloaded.clear()
    for key, kept in list(_kept.items()):
        del _kept[key]
        others = [m for m in getattr(mm, "current_loaded_models", []) if m.model is not kept.patcher]
        mm.free_memory(1e30, kept.patcher.load_device, keep_loaded=others)
        log.info("%s released: %s (%s)", LOG_PREFIX, kept.label, reason)


def _load(request: ModelRequest, key: tuple, load_device: torch.device, offload_device: torch.device,
          progress: Progress | None) -> tuple[_Kept, float]:
    import comfy.model_patcher
    from comfy.patcher_extension import CallbacksMP

    model, seconds = build_reporting(request, {}, progress)
    model.to(offload_device)
    mixed = make_streamable(model)
    pin_input_device(model, load_device)
    # ModelPatcher, not CoreModelPatcher: ComfyUI's dynamic VRAM patcher (CoreModelPatcher on recent NVIDIA
    # installs) needs layers built by comfy.ops with its own state-dict loading, which a transformers model is not.
    patcher = comfy.model_patcher.ModelPatcher(_LLMHolder(model, request.dtype), load_device=load_device,
                                               offload_device=offload_device)
    patcher.add_callback(CallbacksMP.ON_LOAD, _buffers_follow)
    patcher.add_callback(CallbacksMP.ON_DETACH, functools.partial(_on_detach, key))
    prompt_id, node_id = _executing()
    kept = _Kept(key, request.label, patcher, model, bool(mixed), prompt_id, node_id)
    _kept[key] = kept
    return kept, seconds


class ComfyPlacement(Placement):
    """The LLM under ComfyUI's memory manager (the module docstring). `choice` is the node's `device` input
    (DEVICES); `node` names the node in the log."""

    def __init__(self, choice: str = "auto", node: str = "PSA"):
        if choice not in DEVICES:
            raise ValueError(f"device {choice!r} is not allowed; allowed: {', '.join(DEVICES)}")
        self.choice, self.node = choice, node

    def devices(self) -> tuple[torch.device, torch.device, str]:
        """(load device, offload device, why it is the CPU: empty when it is not)."""
        import comfy.model_management as mm

        if self.choice == "cpu":
            return torch.device("cpu"), torch.device("cpu"), "its device input is 'cpu'"
        device = mm.get_torch_device()
        if mm.is_device_cpu(device):
            return device, device, "ComfyUI runs on the CPU (no GPU found, or started with --cpu)"
        return device, mm.text_encoder_offload_device(), ""

    @contextlib.contextmanager
    def use(self, request: ModelRequest, progress: Progress | None = None) -> Iterator[Placed]:
        import comfy.model_management as mm

        _unloaded.clear()
        load_device, offload_device, why = self.devices()
        node = self.node + node_label()
        key = request.key + (str(load_device),)
        kept, seconds = _kept.get(key), 0.0
        loaded = kept is None
        if loaded:
            if _kept:
                release_kept(f"{node} needs {request.label} instead")
            kept, seconds = _load(request, key, load_device, offload_device, progress)
        try:
            mm.load_models_gpu([kept.patcher], memory_required=request.working_bytes, force_full_load=kept.full_only)
        except Exception:
            release_kept("loading it failed")
            raise
        if progress is not None and loaded:
            progress(LOAD, 1, 1)
        mode, reason = self.describe(kept, load_device, why, request)
        placed = Placed(kept.model, load_device, mode, reason, loaded, seconds)
        if loaded:
            log.info("%s loaded: %s for %s in %.1f s; %s", LOG_PREFIX, kept.label, node, seconds,
                     placed.describe())
        else:
            prompt_id, _ = _executing()
            earlier = (f"loaded by node {kept.loaded_by} of this prompt" if prompt_id and prompt_id == kept.loaded_in
                       else "loaded by an earlier prompt" if prompt_id else "loaded earlier")
            log.info("%s reused: %s for %s (%s, no weights read); %s", LOG_PREFIX, kept.label, node, earlier,
                     placed.describe())
        try:
            yield placed
        finally:
            placed.model = None

    @staticmethod
    def describe(kept: _Kept, load_device: torch.device, why: str, request: ModelRequest) -> tuple[str, str]:
        import comfy.model_management as mm

        patcher = kept.patcher
        if why:
            return CPU, why
        total, on_device = patcher.model_size(), patcher.loaded_size()
        free = mm.get_free_memory(load_device)
        mode_flag = {mm.VRAMState.LOW_VRAM: " (ComfyUI runs with --lowvram)",
                     mm.VRAMState.NO_VRAM: " (ComfyUI runs with --novram)"}.get(mm.vram_state, "")
        if on_device >= total:
            reason = (f"all {size_text(total)} of weights fit, with {size_text(free)} free after loading "
                      f"for the forward passes (estimated {size_text(request.working_bytes)})")
            if kept.full_only:
                reason += "; this model has weights ComfyUI cannot stream, so it is always loaded fully"
            return FULL, reason
        return PARTIAL, (f"{size_text(on_device)} of its {size_text(total)} of weights on the GPU, the rest streamed "
                         f"from RAM layer by layer: ComfyUI found too little free memory for all of it beside the "
                         f"{size_text(request.working_bytes)} its forward passes need{mode_flag}")


class NodeProgress:
    """One ComfyUI progress bar for a node's LLM: the first half while the weights load (when they do), the rest
    while it runs (profiles encoded, prompts rewritten). Every update is also ComfyUI's interrupt point."""

    STEPS = 100

    def __init__(self):
        import comfy.utils

        self.bar = comfy.utils.ProgressBar(self.STEPS)
        self.loading, self.last = False, -1

    def __call__(self, stage: str, done: int, total: int) -> None:
        fraction = min(max(done / max(total, 1), 0.0), 1.0)
        if stage == LOAD:
            self.loading = True
            value = int(self.STEPS // 2 * fraction)
        else:
            start = self.STEPS // 2 if self.loading else 0
            value = start + int((self.STEPS - start) * fraction)
        if value != self.last:
            self.last = value
            self.bar.update_absolute(value, self.STEPS)

    def finish(self) -> None:
        self(RUN, 1, 1)
