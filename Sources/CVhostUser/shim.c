// Intentionally empty: the shim is header-only (static inline wrappers).
