"""Edit a component in the DUNE DB: seed 004's template_editComponent.py on fieldbridge.

The DB keeps every version: the edit saves a new one with the changed data fields. Run:

    FIELDBRIDGE_CONFIG=fieldbridge.toml python examples/dunedb/edit_component.py UUID

UUID may be the full or the short form. Credentials: [dunedb.environments.NAME] in the settings.
"""

from __future__ import annotations

import argparse
import sys

from fieldbridge.clients.dunedb import DuneDB
from fieldbridge.config import load_settings
from fieldbridge.errors import FieldbridgeError


def main() -> int:
    parser = argparse.ArgumentParser(description="Edit a DUNE DB component.")
    parser.add_argument(
        "component_uuid",
        nargs="?",
        default="5f9ea420-3e88-11ed-9114-03f8483882ff",
        help="the component to edit (full or short UUID)",
    )
    parser.add_argument("--config", help="settings file (default: $FIELDBRIDGE_CONFIG)")
    parser.add_argument("--env", default="development", help="[dunedb.environments.NAME]")
    args = parser.parse_args()

    # The data fields to change and their new values; the other fields keep theirs.
    changes = {
        "textField": "This component has been edited through the M2M application",
    }

    try:
        environment = load_settings(args.config).dune_environment(args.env)
        with DuneDB(environment) as db:
            uuid = db.edit_component(args.component_uuid, changes)
    except (FieldbridgeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"Successfully edited component with UUID: {uuid}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
