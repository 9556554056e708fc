"""Hopper's Airflow provider: run Hopper functions from Airflow DAGs without holding a worker
slot while they run.

Install with ``pip install "hopper-queue[airflow]"`` (from the repository:
``pip install "./python[airflow]"``); Airflow finds the provider through the
``apache_airflow_provider`` entry point, which names :func:`get_provider_info`.

- :class:`~hopper.airflow.hooks.HopperHook` and the ``hopper`` connection type
  (host = the server's URL, password = its token);
- :class:`~hopper.airflow.operators.HopperOperator`: one call, spawned and waited for (deferred
  by default), its output to XCom; retries re-attach to the call instead of spawning another;
- :class:`~hopper.airflow.operators.HopperMapOperator`: one map over a list of inputs;
- :class:`~hopper.airflow.sensors.HopperCallSensor`: waits for a call spawned elsewhere;
- :class:`~hopper.airflow.triggers.HopperCallTrigger`: the trigger they defer to;
- :class:`~hopper.airflow.operators.HopperCallLink`: the "Hopper call" button, a link to the
  call's page on the Hopper dashboard.

Nothing here is imported by ``import hopper``; Airflow is needed only to import these modules.
"""

from __future__ import annotations

from typing import Any

__all__ = ["get_provider_info"]


def get_provider_info() -> dict[str, Any]:
    """What Airflow's provider manager reads: the package, its connection type, hooks,
    operators, sensors, triggers and extra links."""
    from .. import __version__

    return {
        "package-name": "hopper-queue",
        "name": "Hopper",
        "description": "Run Hopper functions, maps and calls from Airflow DAGs.",
        "versions": [__version__],
        "connection-types": [
            {"connection-type": "hopper", "hook-class-name": "hopper.airflow.hooks.HopperHook"},
        ],
        "hooks": [{"integration-name": "Hopper", "python-modules": ["hopper.airflow.hooks"]}],
        "operators": [{"integration-name": "Hopper", "python-modules": ["hopper.airflow.operators"]}],
        "sensors": [{"integration-name": "Hopper", "python-modules": ["hopper.airflow.sensors"]}],
        "triggers": [{"integration-name": "Hopper", "python-modules": ["hopper.airflow.triggers"]}],
        "extra-links": ["hopper.airflow.operators.HopperCallLink"],
    }
