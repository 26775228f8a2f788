"""Edit an action in the DUNE DB: seed 004's template_editAction.py on fieldbridge.

The DB keeps every version: the edit saves a new one with the changed data fields. Run:

    FIELDBRIDGE_CONFIG=fieldbridge.toml python examples/dunedb/edit_action.py ACTION_ID

Credentials: [dunedb.environments.NAME] in the settings.
"""

from __future__ import annotations

import argparse
import sys

from fieldbridge.clients.dunedb import DuneDB
from fieldbridge.config import load_settings
from fieldbridge.errors import FieldbridgeError


def main() -> int:
    parser = argparse.ArgumentParser(description="Edit a DUNE DB action.")
    parser.add_argument(
        "action_id",
        nargs="?",
        default="63340ac79708eb30e6403cb9",
        help="the action to edit (24 hex digits)",
    )
    parser.add_argument("--config", help="settings file (default: $FIELDBRIDGE_CONFIG)")
    parser.add_argument("--env", default="development", help="[dunedb.environments.NAME]")
    args = parser.parse_args()

    # The data fields to change and their new values; the other fields keep theirs.
    changes = {
        "actionName": "M2M Action (edited)",
        "measurement": 19.07,
    }

    try:
        environment = load_settings(args.config).dune_environment(args.env)
        with DuneDB(environment) as db:
            action_id = db.edit_action(args.action_id, changes)
    except (FieldbridgeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"Successfully edited action with ID: {action_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
