"""Training: the one jitted epoch loop (loop), the MLP trainers (mlp_trainer, online), the SAE trainer
(sae_trainer), groups of same-shape configurations in one vmapped program (vmapped), and what runs around them:
checkpoints, interrupts, learning-rate schedules, devices and hosts."""
