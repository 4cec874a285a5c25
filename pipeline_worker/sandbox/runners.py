"""The sandbox the settings choose (`MLOPS_SANDBOX`)."""

from __future__ import annotations

from mlops_core.settings import Settings
from pipeline_worker.sandbox import Sandbox


def sandbox_for(settings: Settings) -> Sandbox:
    if settings.sandbox == "kubernetes":
        from pipeline_worker.sandbox.kubernetes import KubernetesSandbox

        return KubernetesSandbox(settings)
    if settings.sandbox == "off":
        from pipeline_worker.sandbox.unboxed import Unboxed

        return Unboxed()
    from pipeline_worker.sandbox.local import LocalSandbox

    return LocalSandbox()
