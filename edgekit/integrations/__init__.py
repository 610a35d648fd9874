"""Where detections go besides the caller: a drone's autopilot over MAVLink (mavlink.py), a fleet's MQTT broker as
JSON (mqtt_detections.py), a robot over ROS 2 or into a rosbag2 recording (ros2.py). Device side, each
integration's library an optional extra (or, for rclpy, the robot's own ROS install) imported only when used."""
