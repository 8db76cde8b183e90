//! calseg-metrics (under construction)
