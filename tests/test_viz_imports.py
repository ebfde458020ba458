"""``import saliency`` stays light; its picture and audit packages load on first use."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def _modules_after(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; return what it prints as JSON."""
    env = dict(os.environ)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    return json.loads(done.stdout)


def test_import_saliency_loads_neither_matplotlib_nor_pictures_nor_audits() -> None:
    seen = _modules_after(
        "import json, sys, saliency\n"
        "heavy = ['matplotlib', 'PIL', 'saliency.viz', 'saliency.audit', 'saliency.models']\n"
        "print(json.dumps({m: m in sys.modules for m in heavy}))"
    )
    assert seen == dict.fromkeys(seen, False)


def test_viz_and_audit_are_attributes_after_import_saliency() -> None:
    seen = _modules_after(
        "import json, sys, saliency\n"
        "found = {'viz': saliency.viz.view.__module__, 'audit': saliency.audit.run.__name__,\n"
        "         'models': saliency.models.load.__name__, 'in_dir': 'viz' in dir(saliency)}\n"
        "found['matplotlib'] = 'matplotlib.pyplot' in sys.modules or 'matplotlib' in sys.modules\n"
        "found['figure'] = saliency.viz.plot_classes.__module__\n"
        "print(json.dumps(found))"
    )
    assert seen["viz"] == "saliency.viz.viewer"
    assert seen["audit"] == "run" and seen["models"] == "load" and seen["in_dir"]
    assert seen["matplotlib"] is False  # saliency.viz and saliency.audit do not need it
    assert seen["figure"] == "saliency.viz.figures"  # imported when first asked for


def test_unknown_attributes_still_raise() -> None:
    import pytest

    import saliency

    with pytest.raises(AttributeError, match="has no attribute 'vis'"):
        saliency.vis  # noqa: B018
    with pytest.raises(AttributeError, match="has no attribute 'plot'"):
        saliency.viz.plot  # noqa: B018
