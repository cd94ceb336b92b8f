"""Training: plan of members, jitted steps, the loop, work-dir outputs."""
