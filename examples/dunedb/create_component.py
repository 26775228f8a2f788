"""Create a component in the DUNE DB: seed 004's template_createComponent.py on fieldbridge.

The credentials come from the settings, never from the script: the table
[dunedb.environments.NAME] of the file that --config or FIELDBRIDGE_CONFIG names (or the
FIELDBRIDGE_DUNEDB__ENVIRONMENTS__NAME__* variables). Run:

    FIELDBRIDGE_CONFIG=fieldbridge.toml python examples/dunedb/create_component.py --env development
"""

from __future__ import annotations

import argparse
import sys

from fieldbridge.clients.dunedb import DuneDB
from fieldbridge.config import load_settings
from fieldbridge.errors import FieldbridgeError


def main() -> int:
    parser = argparse.ArgumentParser(description="Create a DUNE DB component.")
    parser.add_argument("--config", help="settings file (default: $FIELDBRIDGE_CONFIG)")
    parser.add_argument("--env", default="development", help="[dunedb.environments.NAME]")
    args = parser.parse_args()

    # A new component needs its type form ID (a type form the DB already has) and its data,
    # the field: value pairs one would enter into that type form on the web.
    component_type_form_id = "basic_component"
    component_data = {
        "name": "New M2M Component",
        "textField": "This is a component created through the M2M application",
    }

    try:
        environment = load_settings(args.config).dune_environment(args.env)
        # One token and one connection serve every call made inside the block.
        with DuneDB(environment) as db:
            uuid = db.create_component(component_type_form_id, component_data)
    except (FieldbridgeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"Successfully submitted component with UUID: {uuid}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
