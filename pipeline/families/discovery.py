"""Families found by structure, for an architecture no module describes.

The layer list is the longest ``ModuleList`` of blocks that share one class and one set of parameter shapes; a
block's linears fall into the four groups by their widths: the FFN up projection(s) widen the hidden size to the
config's FFN width, the down projection narrows it back, the rest that read the hidden size are Q/K/V (fused or
not) and the one that writes it back is the attention output. The config keys are found by their values, the
attention module is the Q/K/V linears' common parent, and the attributes ``activate`` must follow when heads are
pruned are its integer attributes equal to the head count or the heads' total width. Anything short of exactly one
reading is refused with what was seen; ``loading.structure_fails`` then checks the result on the real weights (at ``load``).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from torch import nn

from tailorfit.pipeline.errors import TailorfitError
from tailorfit.pipeline.families import ConfigKeys, ModelFamily

FOUND = "found-"  # prefix of a discovered family's name
_KEY_NAMES = {  # config keys that commonly state each size, in order of preference
    "layers": ("num_hidden_layers", "n_layer", "num_layers", "n_layers", "encoder_layers"),
    "hidden": ("hidden_size", "d_model", "n_embd", "dim", "embed_dim"),
    "heads": ("num_attention_heads", "n_head", "num_heads", "n_heads", "encoder_attention_heads"),
    "ffn": ("intermediate_size", "ffn_dim", "n_inner", "hidden_dim", "d_ff", "encoder_ffn_dim"),
    "kv_heads": ("num_key_value_heads", "n_kv_heads", "num_kv_heads"),
    "head_dim": ("head_dim",),
}


def discover_family(model: nn.Module, config: Mapping[str, Any], task: str, inputs: list[str]) -> ModelFamily:
    """The family of ``model`` (built from ``config``; meta tensors suffice) read off its modules, or a one-line refusal."""
    model_type = config.get("model_type", "?")
    layers_path, block = _layer_list(model, model_type)
    groups, sizes = _groups(block, config, model_type)
    keys = _config_keys(config, sizes, model_type)
    attention = _common_parent(groups["qkv"])
    heads = int(config[keys.heads])
    head_dim = int(config[keys.head_dim]) if keys.head_dim and config.get(keys.head_dim) else sizes["hidden"] // heads
    module = block.get_submodule(attention) if attention else block
    ints = {k: v for k, v in vars(module).items() if isinstance(v, int) and not isinstance(v, bool)}
    return ModelFamily(
        name=f"{FOUND}{model_type}", model_types=(model_type,), layers=layers_path, groups=groups,
        kind="decoder" if task == "causal-lm" else "encoder", modality="image" if task == "image-classification" else "text",
        attention=attention, config_keys=keys, inputs=tuple(inputs),
        head_count_attributes=tuple(sorted(k for k, v in ints.items() if v == heads)),
        head_width_attributes=tuple(sorted(k for k, v in ints.items() if v == heads * head_dim and v != heads)),
    )


class UnreadableStructure(TailorfitError):
    """The structure does not read as exactly one family: the model can still run whole."""


def _refuse(model_type: str, why: str) -> UnreadableStructure:
    return UnreadableStructure(f"no family module describes {model_type}, and its structure does not say which linears are which: {why}",
                          "add a module in pipeline/families/ for it (docs/architecture.md, 'Add a model family')")


def _layer_list(model: nn.Module, model_type: str) -> tuple[str, nn.Module]:
    def signature(block: nn.Module) -> tuple:
        return type(block), tuple((n, tuple(p.shape)) for n, p in block.named_parameters())

    stacks = [(name, len(m)) for name, m in model.named_modules()
              if isinstance(m, nn.ModuleList) and len(m) > 1 and len({signature(b) for b in m}) == 1]
    if not stacks:
        raise _refuse(model_type, "no list of identical blocks")
    longest = max(n for _, n in stacks)
    found = [name for name, n in stacks if n == longest]
    if len(found) > 1:
        raise _refuse(model_type, f"{len(found)} lists of {longest} identical blocks ({', '.join(found)})")
    return found[0], model.get_submodule(found[0])[0]


def _groups(block: nn.Module, config: Mapping[str, Any], model_type: str) -> tuple[dict[str, tuple[str, ...]], dict[str, int]]:
    linears = [(name, m.in_features, m.out_features) for name, m in block.named_modules() if isinstance(m, nn.Linear)]
    seen = ", ".join(f"{n} {i}->{o}" for n, i, o in linears) or "no linear layers"
    widths = Counter(w for _, i, o in linears for w in (i, o))
    if not widths:
        raise _refuse(model_type, seen)
    hidden = widths.most_common(1)[0][0]
    ffn_widths = {o for _, i, o in linears if i == hidden} & {i for _, i, o in linears if o == hidden} & _config_values(config, "ffn")
    if len(ffn_widths) != 1:
        raise _refuse(model_type, f"{len(ffn_widths)} FFN widths among its block's linears ({seen})")
    ffn = ffn_widths.pop()
    up = [n for n, i, o in linears if i == hidden and o == ffn]
    down = [n for n, i, o in linears if i == ffn and o == hidden]
    rest = [(n, i, o) for n, i, o in linears if n not in up + down]
    # attention reads the hidden states in its Q/K/V projection(s) and writes them back in its output projection,
    # which every layout registers after them (BERT, LLaMA, MPNet, DistilBERT, fused GPT-NeoX)
    writers = [n for n, i, o in rest if o == hidden]
    out = writers[-1:] if writers else []
    qkv = [(n, i, o) for n, i, o in rest if n not in out and i == hidden]
    groups = {"qkv": tuple(n for n, _, _ in qkv), "attn_out": tuple(out), "ffn_up": tuple(up), "ffn_down": tuple(down)}
    widths_in = {n: i for n, i, _ in rest}
    q_width = qkv[0][2] if len(qkv) == 3 else None
    consistent = (
        len(rest) == len(qkv) + len(out) and len(out) == 1 and len(down) == 1 and len(up) in (1, 2)
        and (len(qkv) == 3 and qkv[1][2] == qkv[2][2] and widths_in[out[0]] == q_width or len(qkv) == 1 and qkv[0][2] > widths_in[out[0]])
    )
    if not consistent:
        raise _refuse(model_type, f"read as {', '.join(f'{g}: {len(v)}' for g, v in groups.items())} ({seen})")
    return groups, {"hidden": hidden, "ffn": ffn}


def _config_values(config: Mapping[str, Any], size: str) -> set[int]:
    return {int(config[k]) for k in _KEY_NAMES[size] if isinstance(config.get(k), int) and not isinstance(config.get(k), bool)}


def _config_keys(config: Mapping[str, Any], sizes: dict[str, int], model_type: str) -> ConfigKeys:
    def key(size: str, value: int | None = None) -> str | None:
        return next((k for k in _KEY_NAMES[size] if isinstance(config.get(k), int) and (value is None or config[k] == value)), None)

    found = {"layers": key("layers"), "hidden": key("hidden", sizes["hidden"]), "heads": key("heads"), "ffn": key("ffn", sizes["ffn"])}
    if missing := [size for size, k in found.items() if k is None]:
        raise _refuse(model_type, f"config.json states no {' or '.join(missing)} under a known key ({', '.join(k for s in missing for k in _KEY_NAMES[s])})")
    return ConfigKeys(**found, kv_heads=key("kv_heads"), head_dim=key("head_dim"))


def _common_parent(paths: tuple[str, ...]) -> str:
    parts = [p.split(".")[:-1] for p in paths]
    common = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return ".".join(common)
