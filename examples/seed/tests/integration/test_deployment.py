"""Integration tests the seed pipeline runs with `python -m pytest` through
k8s_exec in a pod of the my-app Deployment (kwok runs exec commands on the
host, in the directory deploy/demo/seed.sh prepares)."""
import json
import os
import pathlib

HERE = pathlib.Path(__file__).resolve().parent


def test_package_manifest_declares_the_app():
    manifest = json.loads((HERE.parent.parent / "package.json").read_text())
    assert manifest["name"] == "my-app"
    assert manifest["scripts"]["test"].startswith("node --test")


def test_app_listens_on_the_deployed_port():
    source = (HERE.parent.parent / "app.js").read_text()
    assert "8080" in source
