"""Loading Hugging Face models for a task, and the plain-tensor interface they are exported with."""
from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tailorfit.pipeline.errors import TailorfitError
from tailorfit.pipeline.families import ModelFamily, family_by_name, find_family
from tailorfit.pipeline.families.discovery import FOUND, UnreadableStructure, discover_family
from tailorfit.pipeline.locations import read_json_object
from tailorfit.pipeline.models.handles import HFModel

TASKS = ("text-classification", "text-regression", "causal-lm", "image-classification")
ARCHITECTURE = "architecture.json"  # marks a sub-network folder written by the extract pass


def read_config(path: Path) -> dict[str, Any]:
    cfg = path / "config.json"
    if not cfg.is_file():
        raise TailorfitError(f"'{path}' has no config.json, so it is not a Hugging Face model folder", "point 'path' at the folder save_pretrained wrote")
    return read_json_object(cfg, "fix config.json, or re-save the model with save_pretrained")


def refuse_beyond_positions(config: dict[str, Any], length: int, model_name: str, setting: str) -> None:
    """Refuse inputs longer than the model's config says it takes: past its position table a runtime fails with an
    index error, or reads garbage and times or scores nothing a user can run."""
    longest = next((int(config[k]) for k in ("max_position_embeddings", "n_positions") if isinstance(config.get(k), int)), None)
    if longest and length > longest:
        raise TailorfitError(f"{model_name} takes {longest} positions, but {setting} lets {length}-token inputs through", f"set {setting} to at most {longest}")


def layer_count(path: Path, family: ModelFamily | None = None) -> int | None:
    """Transformer layers of a model folder (None: no family, given or by its model type, says); a sub-network's
    config.json may describe its super-network."""
    arch = path / ARCHITECTURE
    if arch.is_file():
        return sum(layer["keep"] for layer in json.loads(arch.read_text())["subnet"]["layers"])
    config = read_config(path)
    family = family or find_family(config.get("model_type", "?"))
    return family.num_layers(config) if family else None


def auto_class(task: str):
    import transformers as tf

    return {
        "text-classification": tf.AutoModelForSequenceClassification,
        "text-regression": tf.AutoModelForSequenceClassification,  # one output, trained with a squared error
        "causal-lm": tf.AutoModelForCausalLM,
        "image-classification": tf.AutoModelForImageClassification,
    }[task]


def load_torch_model(handle: HFModel, **kwargs: Any) -> nn.Module:
    """The model in fp32 eval mode, with the task head its handle names."""
    if (handle.path / ARCHITECTURE).is_file():
        return _load_subnet(handle)
    model = auto_class(handle.task).from_pretrained(handle.path, dtype=torch.float32, **kwargs)
    return model.eval()


def _load_subnet(handle: HFModel) -> nn.Module:
    """Rebuild a sub-network's structure from its base config, then load its weights."""
    from safetensors.torch import load_model
    from transformers import AutoConfig

    from tailorfit.pipeline.supernet.elastic import ElasticModel
    from tailorfit.pipeline.supernet.space import SearchSpace, SubnetConfig

    arch = json.loads((handle.path / ARCHITECTURE).read_text())
    base = dict(arch["base_config"])
    config = AutoConfig.for_model(base.pop("model_type"), **base)
    model = auto_class(handle.task).from_config(config, dtype=torch.float32)
    elastic = ElasticModel(model, family_of(handle), SearchSpace.model_validate(arch["space"]))
    elastic.activate(SubnetConfig.model_validate(arch["subnet"]))
    model = elastic.extract(copy=False)
    load_model(model, str(handle.path / "model.safetensors"))
    return model.eval()


def load_preprocessor(handle: HFModel):
    if handle.task == "image-classification":
        import transformers

        # AutoImageProcessor and the default processors need torchvision, which cannot sit beside this torch:
        # use the PIL-based variant of the processor class the folder names.
        config = json.loads((handle.path / "preprocessor_config.json").read_text())
        name = config.get("image_processor_type", "ViTImageProcessor").removesuffix("Fast").removesuffix("Pil")
        return getattr(transformers, f"{name}Pil").from_pretrained(handle.path)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(handle.path)
    if tok.pad_token is None:  # decoders often ship without one; padding is masked anyway
        tok.pad_token = tok.eos_token
    return tok


def family_of(handle: HFModel, needed_for: str = "this step") -> ModelFamily:
    """The model's family: its module's, or the one found by structure that its handle carries."""
    if handle.family_spec is not None:
        return ModelFamily.from_spec(handle.family_spec)
    return family_by_name(handle.family, needed_for)


def found_family(path: Path, config: dict[str, Any], task: str) -> ModelFamily:
    """The family read off the structure of a model no module describes (``families/discovery.py``), built on the meta
    device from its config: no weights are read, so planning stays cheap for any size."""
    from transformers import CONFIG_MAPPING, AutoConfig, __version__

    model_type = config["model_type"]
    if model_type not in CONFIG_MAPPING:
        raise TailorfitError(f"transformers {__version__} does not know the model type '{model_type}'",
                             "use a model of a type it knows, or register its classes with transformers' Auto classes before running")
    try:
        with torch.device("meta"):
            skeleton = auto_class(task).from_config(AutoConfig.for_model(model_type, **{k: v for k, v in config.items() if k != "model_type"}))
    except Exception as exc:  # noqa: BLE001 - whatever transformers raises, the config does not describe a model it can build
        if "Unrecognized configuration class" in str(exc):
            raise TailorfitError(f"transformers has no {task} model for the {model_type} architecture", "set the load step's task to one this architecture has") from None
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise TailorfitError(f"transformers cannot build a {model_type} model from config.json of '{path}' ({type(exc).__name__}: {first})",
                             "fix config.json, or re-save the model with save_pretrained") from None
    offered = ["pixel_values"] if task == "image-classification" else _tokenizer_inputs(path)
    return discover_family(skeleton, config, task, _accepted(skeleton, offered))


def structure_fails(net: nn.Module, family: ModelFamily, config: dict[str, Any], example: tuple[torch.Tensor, ...], names: list[str]) -> str | None:
    """Why a family found by structure does not hold on ``net``'s weights (None: it holds): made elastic the model must
    compute the same function, and its smallest sub-network must run. ``net`` is made elastic in place."""
    from tailorfit.pipeline.supernet.elastic import ElasticModel
    from tailorfit.pipeline.supernet.space import space_over

    wrapper = ExportWrapper(net, names).eval()
    space = space_over(family.dims(config), ffn_step=8, min_layers=1)
    try:
        with torch.inference_mode():
            full = wrapper(*example)
            elastic = ElasticModel(net, family, space)
            same = wrapper(*example)
            elastic.activate(space.smallest())
            small = wrapper(*example)
    except Exception as exc:  # noqa: BLE001 - any failure means the reading of the structure is wrong somewhere
        return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:200]}"
    if not torch.allclose(same, full, atol=1e-5):
        return f"made elastic, its outputs moved by {float((same - full).abs().max()):.2e}"
    if small.shape != full.shape or not bool(torch.isfinite(small).all()):
        return f"its smallest sub-network gives {tuple(small.shape)} outputs{'' if torch.isfinite(small).all() else ' with NaN'}"
    return None


def _tokenizer_inputs(path: Path) -> list[str]:
    from transformers import AutoTokenizer

    try:
        return list(AutoTokenizer.from_pretrained(path).model_input_names)
    except Exception:  # noqa: BLE001 - a folder without a usable tokenizer is refused by load itself, in its own words
        return ["input_ids", "token_type_ids", "attention_mask"]


def _accepted(model: nn.Module, names: list[str]) -> list[str]:
    accepted = inspect.signature(model.forward).parameters
    return [n for n in names if n in accepted]


def input_names(model: nn.Module, handle: HFModel) -> list[str]:
    """The tensors the exported graph takes, in order."""
    if handle.family is None:  # what the preprocessor gives that the model takes, in the preprocessor's order
        return _accepted(model, ["pixel_values"] if handle.task == "image-classification" else load_preprocessor(handle).model_input_names)
    return _accepted(model, family_of(handle).input_names(model.config.to_dict()))


class ExportWrapper(nn.Module):
    """Positional tensors in, logits out: the signature every target lowers."""

    def __init__(self, model: nn.Module, names: list[str]):
        super().__init__()
        self.model = model
        self.names = names
        self.extra = {"use_cache": False} if "use_cache" in inspect.signature(model.forward).parameters else {}

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, tensors)), **self.extra).logits


def example_inputs(handle: HFModel, model: nn.Module, names: list[str], batch: int = 2, seq: int = 16) -> tuple[torch.Tensor, ...]:
    """Inputs to trace with; batch 2 because torch.export specialises a dimension of size 1."""
    g = torch.Generator().manual_seed(0)
    cfg = model.config
    out = []
    for n in names:
        if n == "pixel_values":
            size = cfg.image_size
            out.append(torch.randn(batch, cfg.num_channels, size, size, generator=g))
        elif n == "input_ids":
            out.append(torch.randint(0, cfg.vocab_size, (batch, seq), generator=g))
        elif n == "attention_mask":
            mask = torch.ones(batch, seq, dtype=torch.long)
            mask[1, seq // 2:] = 0  # a padded row, so masking is traced for real
            out.append(mask)
        else:
            out.append(torch.zeros(batch, seq, dtype=torch.long))
    return tuple(out)


def export_ready(handle: HFModel) -> tuple[ExportWrapper, tuple[torch.Tensor, ...], list[str]]:
    """The model as every target captures it: the positional wrapper, inputs to trace with, and their names."""
    net = load_torch_model(handle)
    names = input_names(net, handle)
    return ExportWrapper(net, names).eval(), example_inputs(handle, net, names), names


def model_facts(path: Path, task: str, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """What can be known of a model folder (or of ``config``, e.g. read from a GGUF file) without loading its weights."""
    if task not in TASKS:
        raise TailorfitError(f"unsupported task '{task}'", f"use one of: {', '.join(TASKS)}")
    config = config or read_config(path)
    if "model_type" not in config:
        raise TailorfitError(f"config.json of '{path}' names no model_type", "re-save the model with save_pretrained, which writes it")
    family = find_family(config["model_type"])
    if family is None:
        try:
            family = found_family(path, config, task)
        except UnreadableStructure as refused:  # what its auto class loads, tailorfit runs whole; layer-wise steps refuse it
            return {"family": None, "model_type": config["model_type"], "task": task, "num_layers": None, "family_refused": refused.problem}
    if task not in family.tasks:
        raise TailorfitError(f"task '{task}' does not fit a {family.name} model", f"use task: {' or '.join(family.tasks)} for {family.name} models")
    facts = {"family": family.name, "model_type": config["model_type"], "task": task}
    if family.name.startswith(FOUND):
        facts["family_spec"] = family.spec()
    if (path / ARCHITECTURE).is_file():  # a sub-network: config.json may describe its super-network
        return {**facts, "num_layers": layer_count(path)}
    try:
        num_layers, dims = family.num_layers(config), family.dims(config)
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
        raise TailorfitError(f"config.json of '{path}' does not describe a {family.name} model's sizes ({type(exc).__name__}: {exc})",
                             "fix config.json, or re-save the model with save_pretrained") from None
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (num_layers, *dims.values()) if v is not None):
        raise TailorfitError(f"config.json of '{path}' gives sizes that are not positive whole numbers ({dims}, {num_layers} layers)",
                             "fix config.json, or re-save the model with save_pretrained")
    return {**facts, "num_layers": num_layers, "dims": dims}

