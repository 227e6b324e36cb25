from twisted.application.service import ServiceMaker

volumecapMaster = ServiceMaker(
    "volumecap master",
    "volumecap.master.tap",
    "Primary master of one volumecap data center.",
    "volumecap-master",
)
