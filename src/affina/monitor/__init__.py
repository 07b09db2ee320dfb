"""Monitoring after deployment: drift of served traffic against the training data, feedback
turned into training rows, and the retraining loop's policy (govern layer)."""
