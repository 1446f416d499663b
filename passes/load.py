"""load: a Hugging Face model from a local folder, a package (``pkg://``) or a hub id.

Consumes: nothing. Produces: ``HFModel`` pointing at the model folder (not copied). Post-condition: the weights
load as config.json describes them, fill most of that model and hold only finite numbers, and a text model's folder
carries its tokenizer's vocabulary (an image model's, its preprocessor config). For an architecture no family module
covers, the handle carries the family read off its structure (``families/discovery.py``) if that reading holds on
the weights; otherwise ``family`` is None and the model runs whole (its notes say why).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from pydantic import Field

from tailorfit.pipeline.contract import Facts, Pass, PassConfig, PassContext, PortFacts
from tailorfit.pipeline.errors import TailorfitError
from tailorfit.pipeline.models.handles import HFModel, Task
from tailorfit.pipeline.locations import PKG_SCHEME, content_hash, resolve_location
from tailorfit.pipeline.models.loading import (ARCHITECTURE, auto_class, example_inputs, family_of, input_names, load_torch_model, model_facts, read_config,
                                               structure_fails)


GGUF_CONVERSION = 2  # 2: tokenizer saved from its backend (1 reloaded with the wrong pre-tokenizer)


class LoadConfig(PassConfig):
    path: str = Field(description="local folder, pkg://PACKAGE/relative/path, or a hub id (only where a hub is reachable)")
    task: Task = "text-classification"
    name: str | None = Field(default=None, description="short model name used in candidate ids (default: the folder name)")
    trust_remote_code: bool = False
    gguf_file: str | None = Field(default=None, description="a GGUF file inside 'path' to load instead of safetensors; its weights are dequantised to fp32")


class Load(Pass):
    name = "load"
    Config = LoadConfig
    packages = ("transformers",)
    keyed_context = ()  # a copy (or conversion) of the model folder: no seed or thread count changes it

    def __init__(self, config: LoadConfig):
        super().__init__(config)
        self._folder: Path | None = None
        self._config_cache: dict[str, Any] | None = None

    def folder(self) -> Path:
        if self._folder is None:
            self._folder = self._locate()
        return self._folder

    def _locate(self) -> Path:
        path = resolve_location(self.config.path)
        if path.is_dir():
            return path
        if path.is_file():
            raise TailorfitError(f"model path '{self.config.path}' is a file, not a model folder", f"give the folder that holds it and its config.json: {path.parent}")
        looks_like_hub_id = not self.config.path.startswith((PKG_SCHEME, "/", ".", "~")) and self.config.path.count("/") == 1
        if not looks_like_hub_id:
            raise TailorfitError(f"model path '{self.config.path}' does not exist", "give a local Hugging Face model folder, pkg://PACKAGE/path, or a hub id")
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(self.config.path))
        except Exception as exc:  # any hub failure means the same thing to the user
            raise TailorfitError(
                f"model '{self.config.path}' is not a local folder and could not be fetched from the hub ({type(exc).__name__})",
                "download it with save_pretrained and give the folder path",
            ) from None

    def _config(self) -> dict[str, Any]:
        if self._config_cache is None:
            if self.config.gguf_file:
                if not (self.folder() / self.config.gguf_file).is_file():
                    raise TailorfitError(f"no GGUF file '{self.config.gguf_file}' in {self.folder()}", "fix gguf_file")
                from transformers import AutoConfig

                self._config_cache = AutoConfig.from_pretrained(self.folder(), gguf_file=self.config.gguf_file).to_dict()
            else:
                self._config_cache = read_config(self.folder())
        return self._config_cache

    def requires(self, inputs: PortFacts) -> None:
        if self._config().get("auto_map") and not self.config.trust_remote_code:
            raise TailorfitError("this model needs its own code (auto_map in config.json)", "set trust_remote_code: true in the load step if you trust it")

    def ensures(self, inputs: PortFacts) -> Facts:
        return model_facts(self.folder(), self.config.task, self._config())

    def fingerprint(self) -> str:
        if self.config.gguf_file:  # the conversion's version travels with the file's hash: bumping it redoes only GGUF loads
            return f"{content_hash(self.folder() / self.config.gguf_file)}:gguf-conversion-{GGUF_CONVERSION}"
        return content_hash(self.folder())

    def run(self, ctx: PassContext) -> HFModel:
        facts = model_facts(self.folder(), self.config.task, self._config())
        config = self._config()
        if facts["family"] is None:
            ctx.log.info("%s: a %s model; no family module describes it, so it runs whole (fine-tune, lower, quantize, measure); "
                         "super-networks and per-layer policies need one. %s", self.folder(), facts["model_type"], facts["family_refused"])
        elif facts.get("family_spec"):
            spec = facts["family_spec"]
            ctx.log.info("%s: no family module describes %s; found by its structure: %d layers in %s, groups %s, attention %s",
                         self.folder(), facts["model_type"], facts["num_layers"], spec["layers"], spec["groups"], spec["attention"] or "(the layer)")
        else:
            ctx.log.info("%s: %s model, %d layers", self.folder(), facts["family"], facts["num_layers"])
        path, notes = self.folder(), []
        if facts["family"] is None:
            notes = [f"No tailorfit family module describes the {facts['model_type']} architecture: it was lowered and quantized whole, "
                     "without super-network search or per-layer precision policies."]
        if self.config.gguf_file:
            path = self._convert_gguf(ctx)
            notes += [f"Its FP32 weights are dequantised from the quantized GGUF file {self.config.gguf_file}, not original full-precision weights."]
        model = HFModel(
            path=path, task=self.config.task, family=facts["family"], family_spec=facts.get("family_spec"), notes=notes,
            name=self.config.name or self.folder().name, num_labels=config.get("num_labels") if config.get("id2label") else None,
        )
        net = _check_weights(model)
        _check_preprocessor(model, gguf=bool(self.config.gguf_file))
        return _check_found_family(ctx, model, net) if model.family_spec else model

    def _convert_gguf(self, ctx: PassContext) -> Path:
        """A plain model folder from a GGUF file: transformers dequantises on load but cannot save that object."""
        from transformers import AutoTokenizer, PreTrainedTokenizerFast

        cls = auto_class(self.config.task)
        with ctx.progress("dequantising GGUF weights", None):
            loaded = cls.from_pretrained(self.folder(), gguf_file=self.config.gguf_file, dtype=torch.float32)
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        clean = cls.from_config(config, dtype=torch.float32)
        clean.load_state_dict(loaded.state_dict())
        out = ctx.work_dir / "model"
        clean.save_pretrained(out)
        # the GGUF tokenizer comes back as a CodeLlamaTokenizer whose saved form reloads with the wrong
        # pre-tokenizer (spaces become unknown tokens): save its backend, which round-trips exactly
        gguf_tok = AutoTokenizer.from_pretrained(self.folder(), gguf_file=self.config.gguf_file)
        specials = {k: getattr(gguf_tok, k) for k in ("bos_token", "eos_token", "unk_token", "pad_token") if getattr(gguf_tok, k) is not None}
        PreTrainedTokenizerFast(tokenizer_object=gguf_tok.backend_tokenizer, **specials).save_pretrained(out)
        probe = "The quick brown fox jumps over the lazy dog, twice."
        if AutoTokenizer.from_pretrained(out)(probe).input_ids != gguf_tok(probe).input_ids:
            raise TailorfitError("the tokenizer converted from the GGUF file does not reproduce the original's tokens", "report this with --debug output")
        return out


# files that hold a tokenizer's vocabulary: without one, transformers builds a tokenizer that maps every word to [UNK]
_VOCABULARY_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model")


def _check_weights(model: HFModel) -> torch.nn.Module:
    """The weights load as config.json describes them, fill most of the model it describes, and hold only finite
    numbers: a corrupt or foreign file fails here, in one line, instead of fine-tuning to a NaN loss, training a model
    that is mostly random, or failing in a later step with the loader's own exception."""
    try:
        if (model.path / ARCHITECTURE).is_file():  # a sub-network tailorfit extracted: its own loader
            net, missing = load_torch_model(model), []
        else:
            net, info = auto_class(model.task).from_pretrained(model.path, dtype=torch.float32, output_loading_info=True)
            missing = info["missing_keys"]
    except Exception as exc:  # missing, truncated or mis-shaped weights all mean the same to a user
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise TailorfitError(f"the weights in '{model.path}' do not load ({type(exc).__name__}: {first})",
                             "re-save the model with save_pretrained, and check that config.json matches the weights") from None
    total = len(net.state_dict())
    if len(missing) > total / 2:  # a task head is a few tensors; most of a model missing means the weights are another model's
        raise TailorfitError(f"the weights in '{model.path}' fill only {total - len(missing)} of the {total} tensors of the "
                             f"{read_config(model.path).get('model_type')} model config.json describes", "point 'path' at the folder these weights were saved with, or fix config.json")
    bad = [name for name, t in net.state_dict().items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise TailorfitError(f"{len(bad)} weight tensors in '{model.path}' hold NaN or infinite values (first: {bad[0]})", "re-export the model: these weights are corrupt")
    return net.eval()


def _check_found_family(ctx: PassContext, model: HFModel, net: torch.nn.Module) -> HFModel:
    """A family found by structure is used only if it holds on the real weights (``net``, changed in place); otherwise
    the model runs whole, and the log and its cards say why."""
    names = input_names(net, model)
    why = structure_fails(net, family_of(model), read_config(model.path), example_inputs(model, net, names), names)
    if why:
        ctx.log.warning("the structure found for %s does not hold on its weights (%s): it runs whole, without super-networks or per-layer policies", model.name, why)
        note = f"The structure tailorfit found for this architecture did not hold on its weights ({why}): it was lowered and quantized whole."
        return model.model_copy(update={"family": None, "family_spec": None, "notes": [*model.notes, note]})
    ctx.log.info("the structure found holds: made elastic the model is unchanged, and its smallest sub-network runs")
    return model


def _check_preprocessor(model: HFModel, gguf: bool) -> None:
    if model.task == "image-classification":
        if not (model.path / "preprocessor_config.json").is_file():
            raise TailorfitError(f"'{model.path}' has no preprocessor_config.json", "save the image processor beside the model (processor.save_pretrained)")
    elif not gguf and not any((model.path / name).is_file() for name in _VOCABULARY_FILES):
        raise TailorfitError(f"'{model.path}' has no tokenizer vocabulary ({', '.join(_VOCABULARY_FILES)})", "save the tokenizer beside the model (tokenizer.save_pretrained)")
