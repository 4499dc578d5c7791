public let tinyVMPlaceholder = 0
