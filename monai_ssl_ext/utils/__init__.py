from .atomic import atomic_open, atomic_path, save_figure, save_torch, write_json, write_text
from .distributed import (
    all_gather_cat,
    all_gather_objects,
    finish_process_group,
    get_rank,
    get_world_size,
    is_dist,
    is_main_process,
    unwrap_model,
)
from .errors import innermost_cause
from .seeding import derive_seed, seed_everything
from .weights import UnreadableWeightsError, load_weights_file

__all__ = [
    "UnreadableWeightsError",
    "all_gather_cat",
    "all_gather_objects",
    "atomic_open",
    "atomic_path",
    "derive_seed",
    "finish_process_group",
    "get_rank",
    "get_world_size",
    "innermost_cause",
    "is_dist",
    "is_main_process",
    "load_weights_file",
    "save_figure",
    "save_torch",
    "seed_everything",
    "unwrap_model",
    "write_json",
    "write_text",
]
