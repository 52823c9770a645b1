"""What every WAN endpoint shares: the control session (session.py) and the adapter
contract (adapter.py)."""
