"""Checkpoints: safe reading and writing, layouts, loading into MetaFormers, whole-model conversion.

==================  ===================================================================
module              concern
==================  ===================================================================
``io``              reading with ``weights_only=True`` (unwrapping, URLs), diagnosing
                    unreadable files, the file being loaded (for error messages),
                    all-or-nothing writes
``layouts``         recognising backbone layouts; key conversion as rule tables
``loading``         ``load_pretrained`` (``init_cfg``), the conversion and strictness that
                    ``MetaFormer._load_from_state_dict`` applies to every load, ``partial_loading``
``convert``         whole mmdet 2.x / mmseg 0.x checkpoints; ``save_converted``, the one
                    writer of converted files
``family``          the architecture a file names, checked against the model
``embedded_config`` configs stored in checkpoints: data only, checked when read
==================  ===================================================================
"""
from .convert import (convert_detector_checkpoint, detector_backbone_layout,
                      detector_dataset_meta, save_converted)
from .embedded_config import check_config_text, config_text_problem, guard_embedded_configs
from .io import (CheckpointError, CheckpointNotFoundError, atomic_save, atomic_write,
                 checkpoint_source, is_url, loading_source, read_checkpoint, unwrap_weights,
                 url_cache_file)
from .layouts import (StateDict, convert_state_dict, detect_layout, extract_state_dict,
                      state_dict_problem)
from .loading import (convert_backbone_keys, load_pretrained, partial_loading,
                      prepare_checkpoint, resolve_weights)

__all__ = [
    'CheckpointError', 'CheckpointNotFoundError', 'StateDict', 'atomic_save', 'atomic_write', 'check_config_text', 'checkpoint_source', 'config_text_problem',
    'convert_backbone_keys', 'convert_detector_checkpoint', 'convert_state_dict', 'detect_layout',
    'detector_backbone_layout', 'detector_dataset_meta', 'extract_state_dict',
    'guard_embedded_configs', 'is_url', 'load_pretrained', 'loading_source', 'partial_loading',
    'prepare_checkpoint', 'read_checkpoint', 'resolve_weights', 'save_converted',
    'state_dict_problem', 'unwrap_weights', 'url_cache_file'
]
