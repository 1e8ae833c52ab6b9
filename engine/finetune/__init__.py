"""Fine-tuning on the user's own files: data, LoRA or full training, checkpoints, PEFT/HF export.

The desktop panel and ``ember-cli finetune`` both drive `finetune`.
"""

from engine.finetune.data import Dataset, Example, FileReport, build_dataset
from engine.finetune.export import load_peft_adapter, save_merged_hf, save_peft_adapter
from engine.finetune.lora import ALL_TARGETS, LoRALinear, add_lora, merge_lora
from engine.finetune.train import (
    CheckpointWriteError,
    FinetuneConfig,
    FinetuneError,
    FinetuneResult,
    Progress,
    TrainingDiverged,
    evaluate,
    finetune,
    latest_checkpoint,
)

__all__ = [
    "ALL_TARGETS",
    "CheckpointWriteError",
    "Dataset",
    "Example",
    "FileReport",
    "FinetuneConfig",
    "FinetuneError",
    "FinetuneResult",
    "LoRALinear",
    "Progress",
    "TrainingDiverged",
    "add_lora",
    "build_dataset",
    "evaluate",
    "finetune",
    "latest_checkpoint",
    "load_peft_adapter",
    "merge_lora",
    "save_merged_hf",
    "save_peft_adapter",
]
