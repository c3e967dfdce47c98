"""Checkpoints: safe reading and writing (``io``), layouts and key conversion (``layouts``),
loading into MetaFormers (``loading``), whole-model conversion (``convert``), the architecture
a file names (``family``), embedded configs (``embedded_config``)."""
from .convert import (convert_detector_checkpoint, detector_backbone_layout,
                      detector_dataset_meta, save_converted)
from .embedded_config import check_config_text, config_text_problem, guard_embedded_configs
from .io import (CheckpointError, CheckpointNotFoundError, atomic_save, atomic_write,
                 checkpoint_source, is_url, loading_source, read_checkpoint, unwrap_weights,
                 url_cache_file)
from .layouts import (StateDict, convert_state_dict, detect_layout, extract_state_dict,
                      state_dict_problem)
from .loading import convert_backbone_keys, load_pretrained, partial_loading, prepare_checkpoint

__all__ = [
    'CheckpointError', 'CheckpointNotFoundError', 'StateDict', 'atomic_save', 'atomic_write',
    'check_config_text', 'checkpoint_source', 'config_text_problem', 'convert_backbone_keys',
    'convert_detector_checkpoint', 'convert_state_dict', 'detect_layout',
    'detector_backbone_layout', 'detector_dataset_meta', 'extract_state_dict',
    'guard_embedded_configs', 'is_url', 'load_pretrained', 'loading_source', 'partial_loading',
    'prepare_checkpoint', 'read_checkpoint', 'save_converted', 'state_dict_problem',
    'unwrap_weights', 'url_cache_file'
]
