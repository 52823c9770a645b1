"""What a device is told to do (pure), and the device profiles the LAN endpoints speak."""
