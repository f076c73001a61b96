"""What wires the layers together for people: the demo (and, later, the command line)."""
