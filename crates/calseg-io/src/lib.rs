//! calseg-io (under construction)
