"""The resume: which file (the rule), on which ranks, and loading on the main process alone
(``CHECKPOINT.LOAD.BROADCAST_FROM_MAIN``)."""
