// The one shape for "config.json asks for this; tsibox accepts it but does not do it".

/** Something config.json asks for that tsibox accepts but does not do. */
export interface NotHonoured {
  /** The config.json field, e.g. `linux.seccomp`. */
  field: string;
  reason: string;
}
