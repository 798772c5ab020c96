"""dqcodec."""
