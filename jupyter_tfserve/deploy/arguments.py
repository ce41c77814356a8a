"""The ``deploy`` subcommand's flags, apart from its code so that ``jupyter tfserve --help`` loads no protos."""

from __future__ import annotations

import argparse

TARGETS = ("kubernetes", "kserve", "kserve-runtime")


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--target", required=True, help=f"one of {', '.join(TARGETS)}")
    parser.add_argument("--model_config_file", default="", help="the models.config the notebook's engine serves")
    parser.add_argument("--model_name", default="", help="one model (with --model_base_path), or the one model "
                        "of --model_config_file to deploy")
    parser.add_argument("--model_base_path", default="", help="the model's base path (its version folders)")
    parser.add_argument("--storage_uri", default="", help="rewrite each base path to URI/<model name>")
    parser.add_argument("--upload", action="store_true", help="copy the local versions to --storage_uri")
    parser.add_argument("--split", action="append", default=[], metavar="MODEL=V:PCT,V:PCT",
                        help="a traffic split between two versions (becomes KServe's canary rollout)")
    parser.add_argument("--name", default="tfserve", help="name of the Kubernetes Deployment and Service")
    parser.add_argument("--image", default="", help="container image (default: per target)")
    parser.add_argument("--output_dir", default="deploy-manifests", help="where the manifests go")
    return parser
