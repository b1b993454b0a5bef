//! The bounding box of the geo query, including boxes across the antimeridian.

/// An inclusive latitude/longitude box. `min_lon > max_lon` means the box
/// crosses the antimeridian: it covers `[min_lon, 180]` and `[-180, max_lon]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GeoBox {
    pub min_lat: f64,
    pub max_lat: f64,
    pub min_lon: f64,
    pub max_lon: f64,
}

impl GeoBox {
    /// Checks the bounds; the error names the parameter at fault.
    pub fn new(min_lat: f64, max_lat: f64, min_lon: f64, max_lon: f64) -> Result<Self, String> {
        for (name, v, lim) in [
            ("min_lat", min_lat, 90.0),
            ("max_lat", max_lat, 90.0),
            ("min_lon", min_lon, 180.0),
            ("max_lon", max_lon, 180.0),
        ] {
            if !v.is_finite() || v < -lim || v > lim {
                return Err(format!(
                    "{name} must be a number in [-{lim}, {lim}], got {v}"
                ));
            }
        }
        if min_lat > max_lat {
            return Err(format!(
                "min_lat ({min_lat}) must not be greater than max_lat ({max_lat})"
            ));
        }
        Ok(GeoBox {
            min_lat,
            max_lat,
            min_lon,
            max_lon,
        })
    }

    /// The box as one or two boxes that do not cross the antimeridian.
    pub fn lon_ranges(&self) -> Vec<(f64, f64)> {
        if self.min_lon <= self.max_lon {
            vec![(self.min_lon, self.max_lon)]
        } else {
            vec![(self.min_lon, 180.0), (-180.0, self.max_lon)]
        }
    }

    #[inline]
    pub fn contains(&self, lat: f64, lon: f64) -> bool {
        let lat_ok = lat >= self.min_lat && lat <= self.max_lat;
        let lon_ok = if self.min_lon <= self.max_lon {
            lon >= self.min_lon && lon <= self.max_lon
        } else {
            lon >= self.min_lon || lon <= self.max_lon
        };
        lat_ok && lon_ok
    }
}
