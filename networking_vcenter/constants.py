"""Names shared by the mechanism driver and its trunk and QoS drivers."""

# The vif_type the mechanism driver binds with: Nova's VIF_TYPE_DVS (a port
# on a distributed port group); neutron-lib has no constant for it.
VIF_TYPE_DVS = "dvs"
