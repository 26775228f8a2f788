"""Demo traffic: simulated Efento sensors, Smart Citizen Kits and a trap network sending to a
running fieldbridge over the real protocols (`fieldbridge simulate`).

One module per kind of device (efento, smartcitizen, trapnet), pacing (when each sends),
drift (plausible values), targets (where to send, from the settings), mqtt (the publishing
connection), tally (what was sent and acknowledged), fleet (runs them all).
"""

from fieldbridge.simulate.fleet import KINDS, Fleet, Plan, Unreachable
from fieldbridge.simulate.tally import SendFailed, Tally
from fieldbridge.simulate.targets import Targets, resolve

__all__ = ["KINDS", "Fleet", "Plan", "SendFailed", "Tally", "Targets", "Unreachable", "resolve"]
