"""Sensor band tables: band sets, centre wavelengths and widths, selections, batch entries."""
import pytest
import torch

from mimkit.core.errors import ConfigError
from mimkit.remote_sensing.sensors import SENSORS, SENTINEL2_L2A_BANDS, band_spec, sensor, wavelengths


def test_band_sets_of_each_sensor():
    assert sensor("Sentinel2").band_names == ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A",
                                              "B09", "B10", "B11", "B12"]
    assert len(SENSORS["landsat8"].bands) == len(SENSORS["landsat9"].bands) == 11
    assert sensor("sentinel1").band_names == ["VV", "VH"]
    assert sensor("rgb").band_names == ["red", "green", "blue"]
    assert len(SENTINEL2_L2A_BANDS) == 12 and "B10" not in SENTINEL2_L2A_BANDS


def test_band_centres_and_widths_in_nanometres():
    s2 = {b.name: b for b in sensor("sentinel2").bands}
    assert s2["B04"].center_nm == pytest.approx(664.6) and s2["B08"].width_nm == 106
    l8 = {b.name: b for b in sensor("landsat8").bands}
    # USGS edges: red 0.64-0.67 um, TIRS-1 10.60-11.19 um
    assert (l8["B4"].min_nm, l8["B4"].max_nm) == pytest.approx((640, 670))
    assert l8["B10"].center_nm == pytest.approx(10895)
    vv = sensor("sentinel1").bands[0]
    assert vv.center_nm == pytest.approx(5.5466e7, rel=1e-3)   # C band, 5.405 GHz
    for s in SENSORS.values():
        assert all(b.width_nm > 0 and b.center_nm > 300 for b in s.bands)


def test_selection_keeps_the_requested_order_and_names_unknown_bands():
    spec = band_spec("sentinel2", ["B04", "b03", "B02"])
    assert spec["band_names"] == ["B04", "B03", "B02"]
    assert torch.allclose(spec["wavelengths"], torch.tensor([664.6, 559.8, 492.4], dtype=torch.float64))
    assert spec["bandwidths"].tolist() == [31, 36, 66]
    assert wavelengths("landsat8").shape == (11,)
    with pytest.raises(ConfigError, match="B13"):
        band_spec("sentinel2", ["B13"])
    with pytest.raises(ConfigError, match="unknown sensor"):
        sensor("modis")
