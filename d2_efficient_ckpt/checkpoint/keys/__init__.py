"""Key names: INCLUDE/EXCLUDE/RENAME selection as a pure plan, foreign naming schemes, and
grouping of keys by module. Pure functions of names and shapes; no tensors are read."""
