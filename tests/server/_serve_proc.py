"""Run ``nacf serve`` (the real CLI code path) in a test subprocess.

When the shipped model is not there yet, the pipeline is replaced by the test scaffold
(``_fakes.py``) in this process only; everything else is the real server.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def _patch_if_needed() -> None:
    try:
        from nacf_core.model import default_model
        from nacf_core.pipeline import Pipeline

        Pipeline(default_model(16))
        return
    except Exception:  # noqa: BLE001 - fall back to the scaffold
        pass
    from _fakes import FakeModel, FakePipeline

    import nacf_core.model as model_mod

    model_mod.default_model = lambda n_channels=16: FakeModel()
    fake_pipeline = types.ModuleType("nacf_core.pipeline")
    fake_pipeline.Pipeline = lambda model, backend=None: FakePipeline(model)
    sys.modules["nacf_core.pipeline"] = fake_pipeline


if __name__ == "__main__":
    _patch_if_needed()
    from nacf_core.cli import main

    sys.exit(main(["serve", *sys.argv[1:]]))
