"""``jupyter tfserve deploy``: the models a notebook serves, as manifests for Kubernetes and KServe.

No Jupyter imports: it reads a ``models.config`` (or one ``--model_name``/``--model_base_path``)
and writes YAML; what a target cannot express is returned as notes, to be printed.
"""
