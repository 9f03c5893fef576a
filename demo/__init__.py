"""`make demo`: a simulated appliance and the head office, both ends on this machine
(:mod:`demo.run`). Not part of the device image nor of the office."""
