#!/usr/bin/env python
"""The model index and the ImageNet weights table from the command line.

    python tools/model_zoo.py list                 # every model name and its config
    python tools/model_zoo.py show NAME            # one model: config path, results, weights
    python tools/model_zoo.py weights              # ImageNet weights: name -> URL
    python tools/model_zoo.py readme [--write] [README.md]   # check / regenerate the README tables
"""
import argparse
import json
import sys
import warnings
from typing import List, Optional

warnings.filterwarnings('ignore', message='pkg_resources is deprecated')


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('command', choices=['list', 'show', 'weights', 'readme'])
    parser.add_argument('arg', nargs='?', help='model name (show) or README path (readme)')
    parser.add_argument('--write', action='store_true', help='readme: rewrite the file')
    args = parser.parse_intermixed_args(argv)
    from metaformer_mm import zoo
    try:
        if args.command == 'list':
            for name, entry in zoo.model_index().items():
                print(f'{name:36s} {entry["Config"]}')
        elif args.command == 'weights':
            for name, url in zoo.weights_table().items():
                print(f'{name:20s} {url}')
        elif args.command == 'show':
            if not args.arg:
                parser.error('show needs a model name')
            entry = zoo.model_info(args.arg)
            print(json.dumps(dict(entry, config_path=zoo.resolve_config(entry['Name'])),
                             indent=2))
        else:
            path = args.arg or 'README.md'
            with open(path) as f:
                text = f.read()
            new = zoo.render_readme(text)
            if args.write:
                with open(path, 'w') as f:
                    f.write(new)
            elif new != text:
                print(f'{path}: the model-zoo tables differ from the index; run '
                      f'`python tools/model_zoo.py readme --write {path}`', file=sys.stderr)
                return 1
    except (ValueError, FileNotFoundError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
