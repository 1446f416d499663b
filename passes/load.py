"""load: a Hugging Face model from a local folder, a package (``pkg://``) or a hub id.

Consumes: nothing. Produces: ``HFModel`` pointing at the model folder (not copied).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from tailorfit.pipeline.contract import Pass, PassConfig, PassContext
from tailorfit.pipeline.errors import TailorfitError
from tailorfit.pipeline.handles import HFModel, Task
from tailorfit.pipeline.locations import PKG_SCHEME, content_hash, resolve_location
from tailorfit.pipeline.models import model_facts, read_config


class LoadConfig(PassConfig):
    path: str = Field(description="local folder, pkg://PACKAGE/relative/path, or a hub id (only where a hub is reachable)")
    task: Task = "text-classification"
    name: str | None = Field(default=None, description="short model name used in candidate ids (default: the folder name)")
    trust_remote_code: bool = False


class Load(Pass):
    name = "load"
    Config = LoadConfig
    packages = ("transformers",)

    def __init__(self, config: LoadConfig):
        super().__init__(config)
        self._folder: Path | None = None

    def folder(self) -> Path:
        if self._folder is None:
            self._folder = self._locate()
        return self._folder

    def _locate(self) -> Path:
        path = resolve_location(self.config.path)
        if path.is_dir():
            return path
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

    def preflight(self, facts: dict[str, Any]) -> None:
        model_facts(self.folder(), self.config.task)
        if read_config(self.folder()).get("auto_map") and not self.config.trust_remote_code:
            raise TailorfitError("this model needs its own code (auto_map in config.json)", "set trust_remote_code: true in the load step if you trust it")

    def describe(self) -> dict[str, Any]:
        return model_facts(self.folder(), self.config.task)

    def fingerprint(self) -> str:
        return content_hash(self.folder())

    def run(self, ctx: PassContext) -> HFModel:
        facts = model_facts(self.folder(), self.config.task)
        config = read_config(self.folder())
        ctx.log.info("%s: %s model, %d layers", self.folder(), facts["family"], facts["num_layers"])
        return HFModel(
            path=self.folder(), task=self.config.task, family=facts["family"],
            name=self.config.name or self.folder().name, num_labels=config.get("num_labels") if config.get("id2label") else None,
        )
