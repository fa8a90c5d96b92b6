module example.com/robot

go 1.26
