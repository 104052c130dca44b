"""What a person takes home from an inversion, one module per concept:

views.py       rendered views of the cached tri-planes (uint8 pictures, PNG files)
video.py       turntable MP4 (H.264, PyAV)
depth.py       16-bit depth PNG that records its own near/far (the generator's ray range), colour preview
mesh.py        density grid (generator.field), marching cubes, vertex colours
mesh_files.py  PLY and GLB writers
bundle.py      `save_inversion`: everything for one photo in one atomic folder, with safe unique names

The orbit and view-grid cameras live in goae.camera (re-exported here for old imports).
"""
from goae.camera import orbit_cameras, view_grid_cameras
from goae.export.bundle import (ExportOptions, check_finite, check_weights, edit_file_name, output_folder, output_name,
                                safe_name, save_inversion, save_latent, view_file_name)
from goae.export.depth import colorize_depth, load_depth, save_depth
from goae.export.errors import ExportError, finite, whole
from goae.export.mesh import EG3D_MESH_LEVEL, density_grid, extract_mesh, marching_cubes, resolve_mesh_level
from goae.export.mesh_files import save_glb, save_ply
from goae.export.video import write_turntable, write_video
from goae.export.views import iter_views, render_views, save_png, to_uint8

__all__ = ["ExportError", "orbit_cameras", "view_grid_cameras", "iter_views", "render_views", "to_uint8", "save_png",
           "write_video", "write_turntable", "save_depth", "load_depth", "colorize_depth", "density_grid", "marching_cubes",
           "extract_mesh", "resolve_mesh_level", "EG3D_MESH_LEVEL", "save_ply", "save_glb", "ExportOptions",
           "save_inversion", "save_latent", "output_name", "output_folder", "safe_name", "edit_file_name",
           "view_file_name", "check_finite", "check_weights", "finite", "whole"]
