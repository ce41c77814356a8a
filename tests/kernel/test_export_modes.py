"""An exported version is its owner's alone: folders 0700, files 0600, whatever the umask or the source's modes."""

from __future__ import annotations

from pathlib import Path

from jupyter_tfserve.kernel.export import export_model
from tests.helpers.files import mode, umask


class FakeClient:
    """What export_model asks of the engine, answered as an engine that loads every version at once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.versions: list[int] = []

    def find_model(self, name: str):
        return None

    def model_repository_root(self) -> str:
        return str(self.root)

    def load(self, name, base_path, **_options) -> dict:
        self.versions = sorted(int(entry.name) for entry in Path(base_path).iterdir() if entry.name.isdigit())
        return {}

    def model(self, name: str) -> dict:
        return {"model_version_status": [{"version": str(v), "state": "AVAILABLE",
                                          "status": {"error_code": "OK", "error_message": ""}}
                                         for v in self.versions]}

    def predict_url(self, name: str) -> str:
        return f"http://127.0.0.1/v1/models/{name}:predict"




def test_an_exported_version_and_the_folders_made_for_it_are_owner_only(tmp_path):
    source = tmp_path / "source"
    (source / "variables").mkdir(parents=True)
    (source / "saved_model.pb").write_bytes(b"graph")
    (source / "variables" / "variables.index").write_bytes(b"index")
    # A folder copied from somewhere permissive: copytree keeps these modes.
    for path in (source, source / "variables"):
        path.chmod(0o777)
    for path in (source / "saved_model.pb", source / "variables" / "variables.index"):
        path.chmod(0o666)
    root = tmp_path / "repo" / "nested"
    with umask(0o022):
        result = export_model(FakeClient(root), str(source), "m", progress=lambda message: None)
    version = Path(result.path)
    assert version == root / "m" / "1"
    for folder in (tmp_path / "repo", root, root / "m", version, version / "variables"):
        assert mode(folder) == 0o700, folder
    for file in (version / "saved_model.pb", version / "variables" / "variables.index"):
        assert mode(file) == 0o600, file
