"""What one prediction of a scene is asked for: reading, mode and outputs (crobim-predict's flags)."""

from dataclasses import dataclass

from .raster import DEFAULT_PERCENTILES, GeoInputError

VECTOR_FORMATS = ("geojson", "gpkg")
MIN_TILE_SIZE = 16


@dataclass(frozen=True)
class PredictOptions:
    bands: tuple[int, ...] | None = None  # --bands, 1-based
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES  # --stretch-percentiles
    threshold: float = 0.5  # --threshold: foreground probability
    min_area_px: float = 0.0  # --min-area-px: drop polygons of fewer mask pixels
    min_area: float = 0.0  # --min-area: drop polygons of a smaller mask area, in CRS units^2
    simplify: float = 0.0  # --simplify: tolerance in CRS units for the vector output (0: exact pixel edges)
    vector_format: str = "geojson"  # --vector-format
    save_prob: bool = False  # --save-prob
    tile_size: int | None = None  # --tile-size (input pixels); None: whole-scene mode
    tile_overlap: int = 0  # --tile-overlap (input pixels)
    progress: bool = False  # tqdm bar over tiles

    def check(self) -> None:
        """Raise :class:`GeoInputError` naming the flag for a value that cannot be used."""
        if not 0.0 <= self.threshold < 1.0:
            raise GeoInputError(f"--threshold {self.threshold} must be in [0, 1), e.g. 0.5")
        for flag, value, unit in (
            ("--min-area-px", self.min_area_px, "pixels"),
            ("--min-area", self.min_area, "CRS units²"),
            ("--simplify", self.simplify, "CRS units"),
        ):
            if not value >= 0:
                raise GeoInputError(f"{flag} {value} must be >= 0 ({unit}); 0 turns it off")
        if self.vector_format not in VECTOR_FORMATS:
            raise GeoInputError(
                f"--vector-format {self.vector_format!r}: use one of {', '.join(VECTOR_FORMATS)}"
            )
        if self.tile_size is None:
            if self.tile_overlap:
                raise GeoInputError("--tile-overlap needs --tile-size (the tiled mode)")
            return
        if self.tile_size < MIN_TILE_SIZE:
            raise GeoInputError(f"--tile-size {self.tile_size} must be at least {MIN_TILE_SIZE} pixels")
        if not 0 <= self.tile_overlap <= self.tile_size // 2:
            raise GeoInputError(
                f"--tile-overlap {self.tile_overlap} must be in [0, {self.tile_size // 2}] "
                "(half of --tile-size)"
            )


DEFAULT_OPTIONS = PredictOptions()
