"""Perform an action on a DUNE DB component: seed 004's template_performAction.py on fieldbridge.

An automated measurement uploaded as an action, the M2M client's motivating use (the DUNE DB
sink of fieldbridge does the same for every reading of a configured device). Run:

    FIELDBRIDGE_CONFIG=fieldbridge.toml python examples/dunedb/perform_action.py UUID

UUID may be the full or the short form. Credentials: [dunedb.environments.NAME] in the settings.
"""

from __future__ import annotations

import argparse
import sys

from fieldbridge.clients.dunedb import DuneDB
from fieldbridge.config import load_settings
from fieldbridge.errors import FieldbridgeError


def main() -> int:
    parser = argparse.ArgumentParser(description="Perform an action on a DUNE DB component.")
    parser.add_argument(
        "component_uuid",
        nargs="?",
        default="5f9ea420-3e88-11ed-9114-03f8483882ff",
        help="the component the action is performed on (full or short UUID)",
    )
    parser.add_argument("--config", help="settings file (default: $FIELDBRIDGE_CONFIG)")
    parser.add_argument("--env", default="development", help="[dunedb.environments.NAME]")
    args = parser.parse_args()

    # The action's type form ID (a type form the DB already has) and its data.
    action_type_form_id = "my_action"
    action_data = {
        "name": "M2M Action",
        "actionPerformedAfterFormsCleanup": True,
        "measurement": 12.04,
    }

    try:
        environment = load_settings(args.config).dune_environment(args.env)
        with DuneDB(environment) as db:
            action_id = db.perform_action(action_type_form_id, args.component_uuid, action_data)
    except (FieldbridgeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"Successfully performed action with ID: {action_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
