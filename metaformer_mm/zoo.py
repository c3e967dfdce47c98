"""Models and weights by name: the model index and the table of ImageNet backbone weights.

Unknown names raise ``ValueError`` listing the closest. ``METAFORMER_MM_WEIGHTS`` names a
JSON/YAML file of extra or replacement weights (mirrors, tests), read at every call."""
import difflib
import functools
import json
import os
import os.path as osp
import re
from typing import Dict, List, Mapping, Optional

PACKAGE_DIR = osp.dirname(osp.abspath(__file__))
# A link to the repository's configs/ and model-index.yml in a checkout or editable install,
# a copy in wheels and sdists (setup.py); mmengine looks for ``<package>/.mim/configs``.
MIM_DIR = osp.join(PACKAGE_DIR, '.mim')
WEIGHTS_ENV = 'METAFORMER_MM_WEIGHTS'
PACKAGE_PREFIX = 'metaformer_mm::'

# ImageNet-1K weights of the backbones, 224x224, by name (the name of the released file).
# sMLPNet-T has no release (microsoft/SPACH published only S and B).
IMAGENET_WEIGHTS: Dict[str, str] = {
    # sail-sg/poolformer v1.0 release (PoolFormer, "MetaFormer is Actually What You Need")
    'poolformer_s12': 'https://github.com/sail-sg/poolformer/releases/download/v1.0/poolformer_s12.pth.tar',
    'poolformer_s24': 'https://github.com/sail-sg/poolformer/releases/download/v1.0/poolformer_s24.pth.tar',
    'poolformer_s36': 'https://github.com/sail-sg/poolformer/releases/download/v1.0/poolformer_s36.pth.tar',
    'poolformer_m36': 'https://github.com/sail-sg/poolformer/releases/download/v1.0/poolformer_m36.pth.tar',
    'poolformer_m48': 'https://github.com/sail-sg/poolformer/releases/download/v1.0/poolformer_m48.pth.tar',
    # sail-sg/metaformer ("MetaFormer Baselines for Vision"), hosted on huggingface sail/dl
    'poolformerv2_s12': 'https://huggingface.co/sail/dl/resolve/main/poolformerv2/poolformerv2_s12.pth',
    'poolformerv2_s24': 'https://huggingface.co/sail/dl/resolve/main/poolformerv2/poolformerv2_s24.pth',
    'poolformerv2_s36': 'https://huggingface.co/sail/dl/resolve/main/poolformerv2/poolformerv2_s36.pth',
    'poolformerv2_m36': 'https://huggingface.co/sail/dl/resolve/main/poolformerv2/poolformerv2_m36.pth',
    'poolformerv2_m48': 'https://huggingface.co/sail/dl/resolve/main/poolformerv2/poolformerv2_m48.pth',
    'identityformer_s12': 'https://huggingface.co/sail/dl/resolve/main/identityformer/identityformer_s12.pth',
    'identityformer_s24': 'https://huggingface.co/sail/dl/resolve/main/identityformer/identityformer_s24.pth',
    'identityformer_s36': 'https://huggingface.co/sail/dl/resolve/main/identityformer/identityformer_s36.pth',
    'identityformer_m36': 'https://huggingface.co/sail/dl/resolve/main/identityformer/identityformer_m36.pth',
    'identityformer_m48': 'https://huggingface.co/sail/dl/resolve/main/identityformer/identityformer_m48.pth',
    'randformer_s12': 'https://huggingface.co/sail/dl/resolve/main/randformer/randformer_s12.pth',
    'randformer_s24': 'https://huggingface.co/sail/dl/resolve/main/randformer/randformer_s24.pth',
    'randformer_s36': 'https://huggingface.co/sail/dl/resolve/main/randformer/randformer_s36.pth',
    'randformer_m36': 'https://huggingface.co/sail/dl/resolve/main/randformer/randformer_m36.pth',
    'randformer_m48': 'https://huggingface.co/sail/dl/resolve/main/randformer/randformer_m48.pth',
    'convformer_s18': 'https://huggingface.co/sail/dl/resolve/main/convformer/convformer_s18.pth',
    'convformer_s36': 'https://huggingface.co/sail/dl/resolve/main/convformer/convformer_s36.pth',
    'convformer_m36': 'https://huggingface.co/sail/dl/resolve/main/convformer/convformer_m36.pth',
    'convformer_b36': 'https://huggingface.co/sail/dl/resolve/main/convformer/convformer_b36.pth',
    'caformer_s18': 'https://huggingface.co/sail/dl/resolve/main/caformer/caformer_s18.pth',
    'caformer_s36': 'https://huggingface.co/sail/dl/resolve/main/caformer/caformer_s36.pth',
    'caformer_m36': 'https://huggingface.co/sail/dl/resolve/main/caformer/caformer_m36.pth',
    'caformer_b36': 'https://huggingface.co/sail/dl/resolve/main/caformer/caformer_b36.pth',
    # microsoft/SPACH v1.0 release (sMLPNet, "Sparse MLP for Image Recognition")
    'smlp_s': 'https://github.com/microsoft/SPACH/releases/download/v1.0/smlp_s.pth',
    'smlp_b': 'https://github.com/microsoft/SPACH/releases/download/v1.0/smlp_b.pth',
}

# What a weights file or config path looks like (and a bare name does not).
_FILE_SUFFIXES = ('.pth', '.pt', '.tar', '.bin', '.ckpt', '.safetensors', '.py', '.json',
                  '.yml', '.yaml')
_NAME = re.compile(r'^[A-Za-z0-9][\w.-]*$')


def is_remote(text: str) -> bool:
    """A URI of any scheme (``https://``, ``s3://``...), not a local path or a name."""
    return '://' in text


def _looks_like_name(text: str) -> bool:
    """``poolformer_s12`` is a name; ``x.pth``, ``dir/x`` and URLs are paths."""
    return bool(_NAME.match(text)) and not text.lower().endswith(_FILE_SUFFIXES)


def _hint(name: str, candidates: List[str], what: str) -> str:
    by_lower = {c.lower(): c for c in candidates}  # matched in lower case, shown as spelt
    close = [by_lower[c] for c in difflib.get_close_matches(
        name.lower(), [c.lower() for c in candidates], n=5, cutoff=0.5)]
    return f'closest: {", ".join(close)}' if close else f'known {what}: {", ".join(candidates)}'


def _closest(name: str, candidates: List[str], what: str) -> str:
    return f'unknown {what[:-1]} {name!r}; {_hint(name, candidates, what)}'


# --------------------------------------------------------------------------- ImageNet weights
def _read_mapping(path: str) -> Dict[str, str]:
    if not osp.isfile(path):
        raise FileNotFoundError(f'{WEIGHTS_ENV}={path}: file not found')
    with open(path) as f:
        text = f.read()
    try:
        if path.endswith('.json'):
            data = json.loads(text)
        else:
            import yaml
            data = yaml.safe_load(text)
    except Exception as err:  # JSON/YAML syntax errors do not name the file
        raise ValueError(f'{WEIGHTS_ENV}={path}: cannot parse it: {err}') from None
    if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise ValueError(f'{WEIGHTS_ENV}={path}: expected a mapping of names to URLs or paths')
    # Relative paths are relative to the file that names them, not to the working directory.
    here = osp.dirname(osp.abspath(path))
    return {k: v if is_remote(v) or osp.isabs(osp.expanduser(v))
            else osp.join(here, v) for k, v in data.items()}


def weights_table(table: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """``IMAGENET_WEIGHTS``, updated by the ``METAFORMER_MM_WEIGHTS`` file, then by ``table``."""
    merged = dict(IMAGENET_WEIGHTS)
    env = os.environ.get(WEIGHTS_ENV)
    if env:
        merged.update(_read_mapping(env))
    if table:
        merged.update(table)
    return merged


def resolve_weights(name_or_path: str, table: Optional[Mapping[str, str]] = None) -> str:
    """The URL or path of weights given by name; a path or URL is returned as is. Something
    that looks like a name and is neither a file nor in the table is a ``ValueError``."""
    if not isinstance(name_or_path, str) or not name_or_path:
        raise ValueError(f'weights: expected a name, path or URL, got {name_or_path!r}')
    if is_remote(name_or_path) or osp.exists(name_or_path):
        return name_or_path
    known = weights_table(table)
    if name_or_path in known:
        return known[name_or_path]
    if not _looks_like_name(name_or_path):
        return name_or_path  # a path that does not exist: the loader names it
    raise ValueError('weights: ' + _closest(name_or_path, sorted(known), 'weights names'))


# --------------------------------------------------------------------------- the model index
@functools.lru_cache(maxsize=4)
def _load_index(mim_dir: str) -> Dict[str, dict]:
    from mmengine.fileio import load
    index_file = osp.join(mim_dir, 'model-index.yml')
    if not osp.isfile(index_file):
        raise FileNotFoundError(
            f'the model index {index_file} is missing: metaformer_mm is installed without '
            'its .mim folder (reinstall with `pip install .` or `pip install -e .`)')
    models: Dict[str, dict] = {}
    for meta_path in load(index_file)['Import']:
        for entry in load(osp.join(mim_dir, meta_path))['Models']:
            if entry['Name'] in models:
                raise ValueError(f'{meta_path}: model {entry["Name"]!r} is listed twice')
            models[entry['Name']] = entry
    return models


def model_index(mim_dir: Optional[str] = None) -> Dict[str, dict]:
    """Every model of the index by name: its metafile entry."""
    return dict(_load_index(osp.realpath(mim_dir or MIM_DIR)))


def _aliases(index: Dict[str, dict]) -> Dict[str, str]:
    """Lower-case name or alias -> name."""
    out = {}
    for name, entry in index.items():
        out[name.lower()] = name
        aliases = entry.get('Alias') or []
        for alias in [aliases] if isinstance(aliases, str) else aliases:
            out[alias.lower()] = name
    return out


def model_info(name: str, mim_dir: Optional[str] = None) -> dict:
    """The index entry of a model given by name or alias (``ValueError`` if unknown)."""
    index = model_index(mim_dir)
    aliases = _aliases(index)
    if name.lower() not in aliases:
        raise ValueError('model: ' + _closest(name, sorted(index), 'model names'))
    return index[aliases[name.lower()]]


def _package_config(rel_path: str, mim_dir: str) -> str:
    configs_dir = osp.join(mim_dir, 'configs')
    configs = osp.realpath(configs_dir)
    path = osp.join(configs_dir, rel_path)
    if osp.isabs(rel_path) or osp.commonpath(
            [configs, osp.realpath(osp.normpath(osp.join(configs, rel_path)))]) != configs:
        raise ValueError(f'config {PACKAGE_PREFIX}{rel_path}: the path leaves the package\'s '
                         f'configs folder {configs}; give a path inside it (e.g. '
                         f'{PACKAGE_PREFIX}detection/retinanet_poolformer_s12.py) or a file path')
    if osp.isfile(path):
        return path
    known = sorted(osp.relpath(osp.join(root, f), configs_dir)
                   for root, _, files in os.walk(configs_dir, followlinks=True)
                   for f in files if f.endswith('.py'))
    raise FileNotFoundError(
        f'config {PACKAGE_PREFIX}{rel_path} not found in {configs_dir}; '
        + _hint(rel_path, known, 'configs'))


def resolve_config(name_or_path: str, mim_dir: Optional[str] = None) -> str:
    """The config file of a model name, alias, ``metaformer_mm::REL_PATH`` or path: an
    unknown name is a ``ValueError``, a missing path a ``FileNotFoundError``."""
    if not isinstance(name_or_path, str) or not name_or_path:
        raise ValueError(f'config: expected a model name or a config path, got {name_or_path!r}')
    mim_dir = mim_dir or MIM_DIR
    if name_or_path.startswith(PACKAGE_PREFIX):
        return _package_config(name_or_path[len(PACKAGE_PREFIX):], mim_dir)
    if osp.isfile(name_or_path):
        return name_or_path
    if _looks_like_name(name_or_path):
        entry = model_info(name_or_path, mim_dir)
        return osp.join(mim_dir, entry['Config'])
    index = model_index(mim_dir)
    raise FileNotFoundError(f'config file not found: {name_or_path} (nor a model name; '
                            + _hint(osp.splitext(osp.basename(name_or_path))[0],
                                    sorted(index), 'model names') + ')')


def _is_drive_page(url: Optional[str]) -> bool:
    return bool(url) and url.startswith('https://drive.google.com/')


def model_weights(name: str, mim_dir: Optional[str] = None) -> Optional[str]:
    """The released whole-model checkpoint URL of a model, or None (no release, or only a
    Google Drive page)."""
    weights = model_info(name, mim_dir).get('Weights')
    return None if _is_drive_page(weights) else weights


def checkpoint_url(url: str) -> str:
    """The URL to download for ``url``: its replacement in ``METAFORMER_MM_WEIGHTS``, else
    itself; a Google Drive page is a ``ValueError``."""
    url = weights_table().get(url, url)
    if _is_drive_page(url):
        raise ValueError(f'{url} is a Google Drive page, not a direct download of a '
                         'checkpoint: open it in a browser, save the file and load that path')
    return url


# --------------------------------------------------------------------------- README tables
# The README's model-zoo tables are generated from the index between these markers, and a
# test checks that they are up to date (``python tools/model_zoo.py readme --write``).
README_BLOCK = re.compile(r'(<!-- model-index:(\w+) .*?-->\n)(.*?)(<!-- /model-index -->)', re.S)


def _metric(entry: dict, key: str) -> str:
    for result in entry.get('Results') or []:
        if key in result.get('Metrics', {}):
            return f'{result["Metrics"][key]:.1f}'
    return '–'


def _released(entry: dict) -> str:
    cells = []
    if entry.get('Weights') and not _is_drive_page(entry['Weights']):
        metrics = entry.get('Weights Results') or {}
        score = ', '.join(f'{k} {v}' for k, v in metrics.items() if isinstance(v, float))
        cells.append(f'[mmseg{f" ({score})" if score else ""}]({entry["Weights"]})')
    if entry.get('Download Page'):
        cells.append(f'[sail-sg, Google Drive]({entry["Download Page"]}) (by hand)')
    return ', '.join(cells) or '–'


def markdown_table(kind: str, index: Optional[Dict[str, dict]] = None) -> str:
    """The README table of ``kind`` ('detection' or 'segmentation') from the index."""
    index = index if index is not None else model_index()
    data = {'detection': 'COCO', 'segmentation': 'ADE20K'}[kind]
    rows = [e for e in index.values() if e['Metadata'].get('Training Data') == data]
    if kind == 'detection':
        lines = ['| Model name | Method | Backbone | Params | box AP | mask AP | Config '
                 '| Released checkpoint |', '|---|---|---|---|---|---|---|---|']
    else:
        lines = ['| Model name | Backbone | Params | mIoU (paper) | Config | Released checkpoint |',
                 '|---|---|---|---|---|---|']
    for e in rows:
        arch = e['Metadata']['Architecture']
        params = e['Metadata'].get('Parameters (M)')
        params = f'{params:.2f}M' if params else '–'
        config = f'[{osp.basename(e["Config"])}]({e["Config"]})'
        if kind == 'detection':
            cells = [arch[1], arch[0], params, _metric(e, 'box AP'), _metric(e, 'mask AP')]
        else:
            cells = [arch[0], params, _metric(e, 'mIoU')]
        lines.append('| ' + ' | '.join([f'`{e["Name"]}`', *cells, config, _released(e)]) + ' |')
    return '\n'.join(lines) + '\n'


def render_readme(text: str, index: Optional[Dict[str, dict]] = None) -> str:
    """``text`` with every generated model-index block replaced by the index's table."""
    return README_BLOCK.sub(lambda m: m.group(1) + markdown_table(m.group(2), index)
                            + m.group(4), text)

