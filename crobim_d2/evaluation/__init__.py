"""RRSIS metrics (oIoU, mIoU, Pr@X)."""
