"""Spectral bands of common Earth-observation sensors: names, centre wavelengths and widths in nanometres.

Spectrum-aware models (SMARTIES) embed a band by its wavelength, not by its position in the image tensor, so a
batch carries `wavelengths` (and optionally `bandwidths` and `band_names`) next to its `image`.
`band_spec("sentinel2", ["B04", "B03", "B02"])` gives exactly those entries for a band selection.

Sources (nominal values; the satellites' measured spectral responses differ by a few nm):
- Sentinel-2 MSI: ESA Sentinel-2 User Handbook / SentiWiki band table, Sentinel-2A centre wavelength and bandwidth.
- Landsat 8 OLI/TIRS and Landsat 9 OLI-2/TIRS-2: USGS band designations (the band edges, in micrometres, are
  the same for both satellites); centre = middle of the band, width = upper minus lower edge.
- Sentinel-1 C-SAR: centre frequency 5.405 GHz (wavelength c / f = 55.47 mm) and its maximum range bandwidth
  of 100 MHz, converted to a wavelength width; VV and VH share the wavelength and differ by polarisation, so
  they are told apart by name.
- RGB: the generic RGB camera ranges of the SMARTIES spectral table (gsumbul/SMARTIES,
  config/electromagnetic_spectrum.yaml: blue 430-545, green 466-620, red 590-710 nm).
- NAIP: the band ranges of the Leica ADS100 camera flown for most recent NAIP collections (blue 435-495,
  green 525-585, red 619-651, NIR 808-882 nm); NAIP contractors have used other cameras in some years.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from mimkit.core.errors import ConfigError

SPEED_OF_LIGHT = 299_792_458.0  # m/s


@dataclass(frozen=True)
class Band:
    """One spectral band: its name, centre wavelength and full width, both in nanometres."""

    name: str
    center_nm: float
    width_nm: float

    @property
    def min_nm(self) -> float:
        return self.center_nm - self.width_nm / 2

    @property
    def max_nm(self) -> float:
        return self.center_nm + self.width_nm / 2


@dataclass(frozen=True)
class Sensor:
    """A sensor: its name and its bands in the order its files store them."""

    name: str
    bands: tuple[Band, ...]

    @property
    def band_names(self) -> list[str]:
        return [band.name for band in self.bands]

    def select(self, names: Sequence[str] | None = None) -> list[Band]:
        """The named bands in the given order (all bands when `names` is None)."""
        if names is None:
            return list(self.bands)
        by_name = {band.name.lower(): band for band in self.bands}
        missing = [n for n in names if str(n).lower() not in by_name]
        if missing:
            raise ConfigError(f"sensor {self.name!r} has no band(s) {', '.join(map(str, missing))}; "
                              f"its bands are {', '.join(self.band_names)}")
        return [by_name[str(n).lower()] for n in names]


def _from_edges(name: str, low_um: float, high_um: float) -> Band:
    """A band given by its lower and upper edges in micrometres (USGS style)."""
    return Band(name, round((low_um + high_um) / 2 * 1000, 3), round((high_um - low_um) * 1000, 3))


def _sar_band(name: str, frequency_ghz: float, bandwidth_mhz: float) -> Band:
    """A radar band from its centre frequency and bandwidth, as a wavelength and wavelength width."""
    center = SPEED_OF_LIGHT / (frequency_ghz * 1e9) * 1e9            # nm
    width = center * (bandwidth_mhz * 1e6) / (frequency_ghz * 1e9)   # d(lambda) = lambda * df / f
    return Band(name, round(center, 1), round(width, 1))


_LANDSAT_OLI_TIRS = (
    _from_edges("B1", 0.43, 0.45),    # coastal aerosol
    _from_edges("B2", 0.45, 0.51),    # blue
    _from_edges("B3", 0.53, 0.59),    # green
    _from_edges("B4", 0.64, 0.67),    # red
    _from_edges("B5", 0.85, 0.88),    # near infrared
    _from_edges("B6", 1.57, 1.65),    # shortwave infrared 1
    _from_edges("B7", 2.11, 2.29),    # shortwave infrared 2
    _from_edges("B8", 0.50, 0.68),    # panchromatic
    _from_edges("B9", 1.36, 1.38),    # cirrus
    _from_edges("B10", 10.60, 11.19),  # thermal infrared 1
    _from_edges("B11", 11.50, 12.51),  # thermal infrared 2
)

SENSORS: dict[str, Sensor] = {
    "sentinel2": Sensor("sentinel2", (
        Band("B01", 442.7, 21), Band("B02", 492.4, 66), Band("B03", 559.8, 36), Band("B04", 664.6, 31),
        Band("B05", 704.1, 15), Band("B06", 740.5, 15), Band("B07", 782.8, 20), Band("B08", 832.8, 106),
        Band("B8A", 864.7, 21), Band("B09", 945.1, 20), Band("B10", 1373.5, 31), Band("B11", 1613.7, 91),
        Band("B12", 2202.4, 175))),
    "landsat8": Sensor("landsat8", _LANDSAT_OLI_TIRS),
    "landsat9": Sensor("landsat9", _LANDSAT_OLI_TIRS),
    "sentinel1": Sensor("sentinel1", (_sar_band("VV", 5.405, 100), _sar_band("VH", 5.405, 100))),
    "rgb": Sensor("rgb", (Band("red", 650, 120), Band("green", 543, 154), Band("blue", 487.5, 115))),
    "naip": Sensor("naip", (Band("red", 635, 32), Band("green", 555, 60), Band("blue", 465, 60),
                            Band("nir", 845, 74))),
}

# Sentinel-2 Level-2A products carry 12 bands: the cirrus band B10 is dropped by the atmospheric correction.
SENTINEL2_L2A_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")


def sensor(name: str) -> Sensor:
    """Look up a sensor by name (case-insensitive)."""
    try:
        return SENSORS[name.lower()]
    except KeyError:
        raise ConfigError(f"unknown sensor {name!r}; choose one of {', '.join(SENSORS)}") from None


def resolve_bands(sensor_or_bands: str | Sensor | Sequence[Band], bands: Sequence[str] | None = None) -> list[Band]:
    """Bands from a sensor name (plus an optional selection by band name), a Sensor, or a list of Bands."""
    if isinstance(sensor_or_bands, str):
        return sensor(sensor_or_bands).select(bands)
    if isinstance(sensor_or_bands, Sensor):
        return sensor_or_bands.select(bands)
    chosen = list(sensor_or_bands)
    if not chosen or not all(isinstance(b, Band) for b in chosen):
        raise ConfigError("bands must be a sensor name, a Sensor or a non-empty list of Band")
    return chosen


def wavelengths(sensor_or_bands: str | Sensor | Sequence[Band], bands: Sequence[str] | None = None) -> torch.Tensor:
    """Centre wavelengths in nm, (C,), of a sensor's bands (all, or the named ones in the given order)."""
    return torch.tensor([b.center_nm for b in resolve_bands(sensor_or_bands, bands)], dtype=torch.float64)


def band_spec(sensor_or_bands: str | Sensor | Sequence[Band], bands: Sequence[str] | None = None) -> dict:
    """The batch entries that describe a band selection: `wavelengths`, `bandwidths` (nm, (C,)) and `band_names`."""
    chosen = resolve_bands(sensor_or_bands, bands)
    return {"wavelengths": torch.tensor([b.center_nm for b in chosen], dtype=torch.float64),
            "bandwidths": torch.tensor([b.width_nm for b in chosen], dtype=torch.float64),
            "band_names": [b.name for b in chosen]}
